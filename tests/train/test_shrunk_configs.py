"""Published configs shortened for a smoke test run: the epoch-based keys that no longer fit are
scaled with one warning line; values typed on the command line and nonsense are still refused.
Every config is loaded and checked in process; real shrunk runs of rn18_16_epochs.yaml are in
test_reliability_train.py (single process) and test_rank_failure.py (torchrun, exits 0 on
resume)."""
from __future__ import annotations

from pathlib import Path

import pytest

from ffcv_utils.base.cli import UserError
from ffcv_utils.train.config import load_config
from ffcv_utils.train.schedules import epoch_lrs, resolution_at

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted(ROOT.glob("rn*_configs/*.yaml"))
pytestmark = pytest.mark.timeout(300)


def data_args(betons):
    return ["--data.train_dataset", str(betons[0]), "--data.val_dataset", str(betons[1])]


@pytest.mark.parametrize("epochs", [1, 3])
def test_every_published_config_shrinks_to_a_valid_run(digits_betons, capsys, epochs):
    assert len(CONFIGS) >= 12
    for cfg in CONFIGS:
        p, meta = load_config(["-C", str(cfg), *data_args(digits_betons),
                               "--training.epochs", str(epochs)])
        err = capsys.readouterr().err
        lr, r = p.lr, p.resolution
        if lr.lr_schedule_type == "cyclic":
            assert 0 < lr.lr_peak_epoch <= epochs, (cfg.name, lr.lr_peak_epoch)
        assert 0 <= r.start_ramp <= r.end_ramp <= epochs, (cfg.name, r)
        if meta["shrunk"]:
            [line] = err.strip().splitlines()
            assert line.startswith(f"warning: training.epochs {epochs} is shorter than the "
                                   "config's ") and "->" in line
        # the schedules of the shortened run make sense: LR rises then falls to ~0, the
        # resolution ends at max_res when the ramp fits
        lrs = [x for e in range(epochs) for x in epoch_lrs(e, 10, schedule=lr.lr_schedule_type,
                                                             lr=lr.lr, epochs=epochs,
                                                             peak_epoch=lr.lr_peak_epoch)]
        assert max(lrs) > 0.5 * lr.lr and lrs[-1] < 0.2 * lr.lr, cfg.name
        last = resolution_at(epochs - 1, min_res=r.min_res, max_res=r.max_res,
                             start_ramp=r.start_ramp, end_ramp=r.end_ramp)
        assert r.min_res <= last <= r.max_res


def test_typed_values_and_nonsense_are_still_refused(digits_betons):
    rn50 = str(ROOT / "rn50_configs/rn50_16_epochs.yaml")
    base = ["-C", rn50, *data_args(digits_betons), "--training.epochs", "1"]
    for extra, words in [
        (["--lr.lr_peak_epoch", "2"], "lr.lr_peak_epoch: must be between 0 and training.epochs"),
        (["--lr.lr_peak_epoch", "-1"], "lr.lr_peak_epoch: must be between 0"),
        (["--resolution.start_ramp", "-2"], "resolution.start_ramp: must be >= 0"),
        (["--resolution.min_res", "256"], "resolution.min_res: 256 is larger than"),
        (["--training.epochs", "0"], "training.epochs: must be at least 1"),
    ]:
        with pytest.raises(UserError, match=words.replace("(", r"\(")):
            load_config(base + extra)


def test_progressive_stages_are_scaled_into_a_short_run(digits_betons, capsys):
    p, meta = load_config(["-C", str(ROOT / "rn50_configs" / "rn50_progressive_fast.yaml"),
                           *data_args(digits_betons), "--training.epochs", "3"])
    stages = [tuple(map(int, s.split(","))) for s in p.resolution.schedule.split(";")]
    assert stages[0][0] == 0 and stages[-1][0] < 3
    assert [e for e, _, _ in stages] == sorted({e for e, _, _ in stages})
    # the recipe's last (largest) size is kept as the last stage
    assert stages[-1][1] == 224
    assert "resolution.schedule" in capsys.readouterr().err
