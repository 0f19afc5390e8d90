"""torchrun with two CPU processes (gloo), launched with the shipped rn18 config: the LR is
scaled to the real global batch, every one of the odd number of val images is evaluated exactly
once, the metrics reduced over ranks equal a single process's evaluation of the same weights, and
a damaged JPEG in the val beton is counted once over the ranks."""
import json
import os
import subprocess
import sys

import pytest

from helpers import ROOT, damaged_copy, free_port, read_log

pytestmark = pytest.mark.slow


def test_torchrun_two_processes_counts_val_once(digits_betons, tmp_path):
    train, _ = digits_betons
    val = damaged_copy(digits_betons[1], tmp_path / "val_damaged.beton")
    common = ["--data.train_dataset", str(train), "--data.val_dataset", str(val),
              "--resolution.min_res", "32", "--resolution.max_res", "32",
              "--validation.resolution", "32", "--validation.batch_size", "100",
              "--data.num_workers", "1", "--logging.folder", str(tmp_path)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         f"--master_port={free_port()}", str(ROOT / "train_imagenet.py"),
         "--config-file", str(ROOT / "rn18_configs/rn18_16_epochs.yaml"), *common,
         "--training.epochs", "1", "--lr.lr_peak_epoch", "0.5", "--training.batch_size", "64",
         "--logging.run_id", "ddp"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    # 0.5 is for 1024 x 1 in the config; 64 x 2 processes -> 0.0625
    assert "lr scaled linearly 0.5 -> 0.0625: global batch 128" in result.stderr
    [record] = read_log(tmp_path / "ddp")  # rank 0 alone writes
    # the damaged image is counted once, summed over ranks, in one line from rank 0
    assert record["decode_failures"] == 1
    assert result.stderr.count("failed to decode") == 1
    assert "epoch 0: 1 image(s) failed to decode" in result.stderr
    assert record["val_images"] == 363  # odd: shards of 182 and 181, no padding, no repeats
    assert record["train_images"] == 2 * (717 // 64) * 64  # 1434 split over 2 ranks
    params = json.loads((tmp_path / "ddp" / "params.json").read_text())
    assert params["derived.world_size"] == 2 and params["derived.effective_lr"] == 0.0625

    single = subprocess.run(
        [sys.executable, str(ROOT / "train_imagenet.py"),
         "--config-file", str(ROOT / "rn18_configs/rn18_16_epochs.yaml"), *common,
         "--training.eval_only", "1", "--logging.run_id", "single",
         "--model.weights", str(tmp_path / "ddp" / "checkpoint_last.pt")],
        capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert single.returncode == 0, single.stderr[-4000:]
    [ev] = read_log(tmp_path / "single")
    assert ev["val_images"] == 363 and ev["decode_failures"] == 1
    # the same weights on every shard (rank 0's BatchNorm statistics are synced before
    # evaluation), so the reduced metrics equal one process's, image for image
    assert round(ev["top_1"] * 363) == round(record["top_1"] * 363)
    assert round(ev["top_5"] * 363) == round(record["top_5"] * 363)
    assert ev["val_loss"] == pytest.approx(record["val_loss"], rel=1e-4)
