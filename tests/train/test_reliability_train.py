"""The trainer never hangs and ends broken runs with one line (real trainer processes, real
ffcv, the small digits betons; every process under a timeout).

Two runs cover several cases. The first is a published config shrunk to 2 epochs, whose
validation batch size leaves one image in the last batch, with an op injected into the training
loader's label pipeline that raises in epoch 1: it must end with one line naming the beton and
the batch and keep epoch 0's checkpoint. The second resumes it on a "full disk": the checkpoint
write fails with one line and epoch 0's checkpoint stays as it was. (Resume finishing a run
after a failure is tested in test_rank_failure.py.)"""
from __future__ import annotations

import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ffcv_utils.beton.sidecar import read_info
from helpers import read_log

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.timeout(400), pytest.mark.slow]  # two training runs


def trainer_args(betons, folder, *extra):
    """rn18's published 16-epoch recipe shrunk to 2 epochs on tiny images (shrink warning)."""
    train, val = betons
    n_val = read_info(val)["num_samples"]
    return ["-C", "rn18_configs/rn18_16_epochs.yaml", "--training.epochs", "2",
            "--data.train_dataset", str(train), "--data.val_dataset", str(val),
            "--resolution.min_res", "32", "--resolution.max_res", "32",
            "--validation.resolution", "32", "--training.batch_size", "64",
            "--validation.batch_size", str(n_val - 1), "--data.num_workers", "2",
            "--logging.plot", "0", "--logging.log_level", "1", "--logging.folder", str(folder),
            "--training.use_blurpool", "0", "--validation.lr_tta", "0",  # faster on CPU
            "--logging.run_id", "r",
            *extra]


def limit_file_size():
    """In the child: a file may not grow past 2 MiB, like a full disk for a checkpoint (works
    for root too, unlike a read-only folder); writes past it fail with EFBIG."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2 * 2**20, 2 * 2**20))


def test_loader_failure_then_full_disk_each_end_with_one_line(small_digits_betons, tmp_path):
    train, val = small_digits_betons
    iters = read_info(train)["num_samples"] // 64
    fail_at = iters + 4  # the fourth batch of epoch 1 (counted from 0: batch 3)
    args = trainer_args(small_digits_betons, tmp_path)
    failed = subprocess.run([sys.executable, str(ROOT / "tests" / "injected_trainer.py"), "fail",
                             str(fail_at), *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert failed.returncode == 2, failed.stderr[-3000:]
    assert "Traceback" not in failed.stderr
    assert ("warning: training.epochs 2 is shorter than the config's 16; scaled to fit: "
            "lr.lr_peak_epoch 2 -> 0.25") in failed.stderr
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith(f"train_imagenet.py: error: loader for {train} (epoch 1, batch 3) "
                           "failed: ValueError: injected: sample could not be decoded; "), last
    assert "--training.resume auto --logging.run_id r" in last
    run_dir = tmp_path / "r"
    checkpoint = run_dir / "checkpoint_last.pt"
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 1  # epoch 0 kept
    [record] = read_log(run_dir)  # epoch 0, validated with a last batch of one image
    assert record["epoch"] == 0 and record["val_images"] == read_info(val)["num_samples"]

    # Resumed on a "full disk": epoch 1 trains, its checkpoint cannot be written -> one line,
    # epoch 0's checkpoint untouched, no temporary file left.
    before = checkpoint.read_bytes()
    full = subprocess.run([sys.executable, str(ROOT / "train_imagenet.py"), *args,
                           "--training.resume", "auto"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, preexec_fn=limit_file_size)
    assert full.returncode == 2, full.stderr[-3000:]
    assert "after epoch 1" in full.stderr and "Traceback" not in full.stderr
    last = full.stderr.strip().splitlines()[-1]
    assert last == (f"train_imagenet.py: error: cannot write {checkpoint}: the write failed: "
                    "disk full or file size limit? ") + last.split("limit? ", 1)[1]
    assert last.endswith("(the previous one is intact)")
    assert checkpoint.read_bytes() == before
    assert sorted(p.name for p in run_dir.iterdir() if "tmp" in p.name) == []
    assert [r["epoch"] for r in read_log(run_dir)] == [0, 1]  # logged before the checkpoint
