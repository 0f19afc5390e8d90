"""LR and resolution schedules: values at known epochs and iterations, for every schedule type."""
import math

import numpy as np
import pytest

from ffcv_utils.train.schedules import (cosine_lr, cyclic_lr, epoch_lrs, lr_at, onecycle_lr,
                                  resolution_at, scaled_lr, step_lr)


def test_cyclic_matches_ffcv_imagenet_triangle():
    kw = dict(lr=1.7, epochs=16, peak_epoch=2)
    assert cyclic_lr(0, **kw) == pytest.approx(1.7e-4)
    assert cyclic_lr(1, **kw) == pytest.approx((1.7e-4 + 1.7) / 2)
    assert cyclic_lr(2, **kw) == pytest.approx(1.7)
    assert cyclic_lr(9, **kw) == pytest.approx(1.7 * 7 / 14)
    assert cyclic_lr(16, **kw) == 0.0


def test_per_iteration_cyclic_equals_interpolating_epoch_boundaries():
    # ffcv-imagenet: np.interp(arange(iters), [0, iters], [lr(e), lr(e + 1)])
    kw = dict(schedule="cyclic", lr=0.5, epochs=16, peak_epoch=2)
    for epoch in (0, 1, 2, 7, 15):
        iters = 7
        expected = np.interp(np.arange(iters), [0, iters],
                             [lr_at(epoch, **kw), lr_at(epoch + 1, **kw)])
        np.testing.assert_allclose(epoch_lrs(epoch, iters, **kw), expected, rtol=1e-12)
    lrs = epoch_lrs(0, 4, **kw)
    assert np.all(np.diff(lrs) > 0)  # rising within the warm-up epoch, not constant


def test_step_drops_every_step_length_epochs():
    kw = dict(lr=0.1, epochs=90, step_ratio=0.1, step_length=30)
    assert step_lr(0, **kw) == pytest.approx(0.1)
    assert step_lr(29.99, **kw) == pytest.approx(0.1)
    assert step_lr(30, **kw) == pytest.approx(0.01)
    assert step_lr(65, **kw) == pytest.approx(0.001)
    assert step_lr(90, **kw) == 0.0
    # with a warm-up: linear from ~0, full LR at the end of it
    assert step_lr(0, warmup_epochs=5, **kw) == pytest.approx(1e-5)
    assert step_lr(2.5, warmup_epochs=5, **kw) == pytest.approx(0.1 * (1e-4 + (1 - 1e-4) / 2))
    assert step_lr(5, warmup_epochs=5, **kw) == pytest.approx(0.1)


def test_cosine_with_warmup():
    kw = dict(lr=2.0, epochs=20, warmup_epochs=4)
    assert cosine_lr(0, **kw) == pytest.approx(2e-4)
    assert cosine_lr(2, **kw) == pytest.approx(2.0 * (1e-4 + (1 - 1e-4) * 0.5))
    assert cosine_lr(4, **kw) == pytest.approx(2.0)
    assert cosine_lr(12, **kw) == pytest.approx(1.0)  # half-way through the cosine
    assert cosine_lr(16, **kw) == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 0.75)))
    assert cosine_lr(20, **kw) == 0.0
    assert cosine_lr(5, lr=1.0, epochs=10) == pytest.approx(0.5)  # no warm-up


def test_onecycle_warmup_fraction_then_cosine():
    kw = dict(lr=1.0, epochs=10, pct_start=0.2)
    assert onecycle_lr(0, **kw) == pytest.approx(1 / 25)
    assert onecycle_lr(1, **kw) == pytest.approx(1 / 25 + (1 - 1 / 25) * 0.5)
    assert onecycle_lr(2, **kw) == pytest.approx(1.0)
    assert onecycle_lr(6, **kw) == pytest.approx(0.5)
    assert onecycle_lr(9.999, **kw) < 1e-5
    lrs = epoch_lrs(2, 10, schedule="onecycle", **kw)
    assert lrs[0] == pytest.approx(1.0) and np.all(np.diff(lrs) < 0)


def test_lr_at_dispatch_and_unknown_type():
    assert lr_at(3, schedule="step", lr=1.0, epochs=10, step_length=2, step_ratio=0.5) == 0.5
    with pytest.raises(ValueError):
        lr_at(0, schedule="linear", lr=1.0, epochs=10)


def test_resolution_ramp_as_ffcv_imagenet():
    kw = dict(min_res=160, max_res=192, start_ramp=11, end_ramp=13)  # rn50/rn18 16 epochs
    got = [resolution_at(e, **kw) for e in range(16)]
    assert got == [160] * 12 + [192] * 4  # epoch 12: interp 176 -> rounds to 192 (x32)
    kw = dict(min_res=160, max_res=224, start_ramp=10, end_ramp=20)
    assert resolution_at(10, **kw) == 160 and resolution_at(20, **kw) == 224
    assert resolution_at(15, **kw) == 192
    assert all(r % 32 == 0 for r in (resolution_at(e, **kw) for e in range(11, 20)))
    # rounding never leaves [min_res, max_res]
    kw = dict(min_res=40, max_res=56, start_ramp=0, end_ramp=10)
    assert all(40 <= resolution_at(e, **kw) <= 56 for e in range(12))


def test_linear_scaling_rule():
    assert scaled_lr(1.7, 512 * 4, 512 * 8) == pytest.approx(0.85)
    assert scaled_lr(0.5, 128, 1024) == pytest.approx(0.0625)


def test_a_schedule_added_to_the_table_is_a_choice_checked_and_shrunk(monkeypatch, tmp_path):
    """One function plus one SCHEDULES entry: the config accepts the name, checks its keys,
    passes only its keys to it and scales them when a recipe is shortened on the command line."""
    from ffcv_utils.base.cli import UserError
    from ffcv_utils.train import schedules
    from ffcv_utils.train.config import load_config
    from ffcv_utils.train.plan import schedule_kwargs

    def constant(epoch, *, lr, epochs, warmup_epochs=0.0):
        return lr if epoch >= warmup_epochs else 0.0

    monkeypatch.setitem(schedules.SCHEDULES, "constant",
                        schedules.Schedule(constant, ("warmup_epochs",)))
    train, val = tmp_path / "train.beton", tmp_path / "val.beton"
    train.write_bytes(b""), val.write_bytes(b"")
    config = tmp_path / "recipe.yaml"
    config.write_text("lr:\n  lr_schedule_type: constant\n  warmup_epochs: 8\n"
                      "training:\n  epochs: 16\n")
    files = ["--data.train_dataset", str(train), "--data.val_dataset", str(val)]
    p, meta = load_config(["--config-file", str(config), *files, "--training.epochs", "4"])
    assert meta["shrunk"] == ["lr.warmup_epochs 8 -> 2"]
    kwargs = schedule_kwargs(p, 0.5)
    assert kwargs == dict(schedule="constant", lr=0.5, epochs=4, warmup_epochs=2.0)
    assert [lr_at(e, **kwargs) for e in (1, 3)] == [0.0, 0.5]
    with pytest.raises(UserError, match=r"lr.warmup_epochs: must be in \[0, training.epochs\)"):
        load_config([*files, "--lr.lr_schedule_type", "constant", "--lr.warmup_epochs", "5",
                     "--training.epochs", "4"])
