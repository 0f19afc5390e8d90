"""The trainer never hangs and ends broken runs with one line (real trainer processes, real
ffcv, digits betons; every process under a timeout).

One run covers several cases: its validation batch size leaves one image in the last batch,
and an op injected into the training loader's label pipeline raises in epoch 1. The run must
end within seconds with one line naming the beton and the batch, keep epoch 0's checkpoint,
and ``--training.resume auto`` must finish the run."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ffcv_utils.dataset_info import read_info

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(400)

# Runs the real trainer with one extra op in the *training* loader's label pipeline (the first
# one built) that raises at the given batch number, counted over the whole run.
INJECT = r"""
import runpy, sys
from dataclasses import replace
from ffcv.pipeline.operation import Operation
import ffcv_utils.data as data

fail_at = int(sys.argv[1])

class FailAt(Operation):
    def generate_code(self):
        calls = [0]
        def fail(inp, _dst):
            calls[0] += 1
            if calls[0] == fail_at:
                raise ValueError("injected: sample could not be decoded")
            return inp
        return fail

    def declare_state_and_memory(self, previous_state):
        return replace(previous_state, jit_mode=False), None

original, built = data._label_pipeline, []
def label_pipeline(device):
    ops = original(device)
    if not built:
        ops.insert(2, FailAt())  # after ToTensor: non-jitted, as the ops that follow it
    built.append(1)
    return ops
data._label_pipeline = label_pipeline
sys.argv = ["train_imagenet.py", *sys.argv[2:]]
runpy.run_path("train_imagenet.py", run_name="__main__")
"""


def trainer_args(betons, folder, *extra):
    train, val = betons
    n_val = read_info(val)["num_samples"]
    return ["--data.train_dataset", str(train), "--data.val_dataset", str(val),
            "--model.arch", "resnet18", "--resolution.min_res", "32",
            "--resolution.max_res", "32", "--validation.resolution", "32",
            "--training.batch_size", "64", "--validation.batch_size", str(n_val - 1),
            "--data.num_workers", "2", "--lr.lr", "0.05", "--lr.batch_size_for_lr", "64",
            "--lr.lr_peak_epoch", "1", "--training.epochs", "2", "--logging.plot", "0",
            "--logging.folder", str(folder), "--logging.run_id", "r", *extra]


def test_loader_failure_ends_run_with_one_line_and_resume_finishes(digits_betons, tmp_path):
    train, val = digits_betons
    iters = read_info(train)["num_samples"] // 64
    fail_at = iters + 4  # the fourth batch of epoch 1 (counted from 0: batch 3)
    args = trainer_args(digits_betons, tmp_path)
    failed = subprocess.run([sys.executable, "-c", INJECT, str(fail_at), *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert failed.returncode == 2, failed.stderr[-3000:]
    assert "Traceback" not in failed.stderr
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith(f"train_imagenet.py: error: loader for {train} (epoch 1, batch 3) "
                           "failed: ValueError: injected: sample could not be decoded; "), last
    assert "--training.resume auto --logging.run_id r" in last
    run_dir = tmp_path / "r"
    state = torch.load(run_dir / "checkpoint_last.pt", weights_only=False)
    assert state["epoch"] == 1  # epoch 0 completed (with its one-image val batch) and kept
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0] and log[0]["val_images"] == read_info(val)[
        "num_samples"]

    resumed = subprocess.run([sys.executable, str(ROOT / "train_imagenet.py"), *args,
                              "--training.resume", "auto"], cwd=ROOT, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "after epoch 1" in resumed.stderr and "Traceback" not in resumed.stderr
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1]
    assert torch.load(run_dir / "checkpoint_last.pt", weights_only=False)["epoch"] == 2
