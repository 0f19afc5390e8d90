"""The trainer as a package: the LR finder builds its set-up and loaders with the trainer's own
builder (every data.* key), a checkpoint written by ``checkpoint.training_state`` restores the
whole training state, and a run crosses resolution and batch stages with the batch shapes each
stage asks for."""
from __future__ import annotations

import gc

import pytest
import torch

from helpers import args_for

from ffcv_utils.train import checkpoint as ckpt
from ffcv_utils.base import distributed as du
from ffcv_utils.train.config import load_config
from ffcv_utils.train import find_lr, run, steps
from ffcv_utils.train.build import build_setup

pytestmark = pytest.mark.timeout(300)
CPU_ENV = du.DistEnv(0, 0, 1, 1, torch.device("cpu"))


@pytest.mark.parametrize("decoder", ["ffcv", "fast"])
def test_find_lr_uses_the_decoder_the_config_names(digits_betons, tmp_path, decoder,
                                                    monkeypatch):
    from ffcv_utils.train import lr_finder

    # a 5-step sweep may show no descent to suggest from: not this test's subject
    monkeypatch.setattr(lr_finder, "suggest", lambda lrs, losses: float(lrs[len(lrs) // 2]))
    result = find_lr.main(["--runs", "1", "--steps", "5", "--out", str(tmp_path / "lr.png"),
                           *args_for(digits_betons, tmp_path), "--data.decoder", decoder])
    gc.collect()
    fast = type(result["decoder"]).__module__ == "ffcv_utils.load.decode"
    assert fast == (decoder == "fast"), type(result["decoder"])


def _one_step(setup, seed):
    torch.manual_seed(seed)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    steps.train_step(setup.model, images, torch.arange(4), setup.recipe, CPU_ENV, None, True,
                     0, 0, 1, steps_now=True)


def test_checkpoint_restores_the_whole_training_state(digits_betons, tmp_path):
    """Weights, optimizer state, scaler, EMA weights, optimizer step count and progress come
    back from the file into a freshly built set-up (not just the schedule's functions)."""
    p, _ = load_config(args_for(digits_betons, tmp_path, "--ema.decay", "0.5",
                                "--training.optimizer", "adamw"))
    torch.manual_seed(0)
    trained = build_setup(p, CPU_ENV, 10, 0.01)
    for seed in range(3):
        _one_step(trained, seed)
    progress = ckpt.Progress(2, 0.42, [{"epoch": 0}, {"epoch": 1}])
    path = ckpt.atomic_save(ckpt.training_state(trained.recipe, progress, params={"a": 1},
                                                run_id="r"), tmp_path / "c.pt")
    torch.manual_seed(1)
    fresh = build_setup(p, CPU_ENV, 10, 0.01)
    checkpoint, _ = ckpt.load_weights(fresh.raw_model, path, "test")
    back, warnings = ckpt.restore_training(checkpoint, fresh.recipe)
    assert warnings == [] and back == progress and fresh.recipe.steps == 3
    for a, b in ((trained.raw_model, fresh.raw_model),
                 (trained.recipe.ema.module, fresh.recipe.ema.module)):
        for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(x, y), k
    assert not torch.equal(next(trained.raw_model.parameters()),
                           next(trained.recipe.ema.module.parameters()))  # EMA is its own
    want, got = trained.recipe.optimizer.state_dict(), fresh.recipe.optimizer.state_dict()
    assert want["param_groups"] == got["param_groups"]
    for k, state in want["state"].items():
        for name, value in state.items():
            assert torch.equal(value, got["state"][k][name]), name
    # the restored set-up takes the same next step as the original
    _one_step(trained, 9)
    _one_step(fresh, 9)
    assert torch.equal(next(trained.raw_model.parameters()), next(fresh.raw_model.parameters()))


def test_run_crosses_resolution_and_batch_stages(small_digits_betons, tmp_path, monkeypatch):
    """resolution.schedule: epoch 1 changes only the size (set_resolution on the same loader),
    epoch 2 the batch too (a rebuilt loader); every batch has its stage's shape."""
    seen = []
    real = steps.train_step

    def spy(model, images, labels, *a, **k):
        seen.append((a[4], tuple(images.shape)))  # (epoch, shape)
        return real(model, images, labels, *a, **k)

    monkeypatch.setattr(steps, "train_step", spy)
    args = args_for(small_digits_betons, tmp_path, "--resolution.schedule", "0,24,64;1,32,64;2,40,32",
                    "--logging.log_level", "0", "--logging.run_id", "st")
    assert run.main(args) == 0
    gc.collect()
    shapes = {e: {s for ep, s in seen if ep == e} for e in range(3)}
    # drop_last: full batches only
    assert shapes == {0: {(64, 3, 24, 24)}, 1: {(64, 3, 32, 32)}, 2: {(32, 3, 40, 40)}}
    assert len([1 for e, _ in seen if e == 2]) == 2 * len([1 for e, _ in seen if e == 1])
