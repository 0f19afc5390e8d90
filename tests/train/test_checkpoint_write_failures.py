"""Writes that fail end the run with one line and keep the previous checkpoint: a full disk
(simulated with a file-size limit, which also works for root) and a read-only run folder (a
read-only bind mount when running as root, where chmod does not bind). The trainer's full-disk
case is in test_reliability_train.py."""
from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ffcv_utils.train import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(200)
LIMIT = 2 * 2**20  # bytes any one file may grow to: small outputs fit, a checkpoint does not


def limit_file_size():
    """In the child: writes past LIMIT fail with EFBIG (SIGXFSZ ignored), as on a full disk."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


SAVE_LIMITED = """
import sys, torch
from ffcv_utils.train import checkpoint as ckpt
sys.path.insert(0, sys.argv[2])
from test_checkpoint_write_failures import limit_file_size
limit_file_size()
try:
    ckpt.atomic_save({"w": torch.ones(2 * %d // 4)}, sys.argv[1])
    print("saved")
except ckpt.WriteError as e:
    print(e)
""" % LIMIT


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path):
    # A fresh process, not a fork: forking a test process that holds torch's and numba's threads
    # can leave the child waiting on a lock forever (and a stuck child keeps pytest from exiting).
    path = tmp_path / ckpt.LAST
    ckpt.atomic_save({"epoch": 3}, path)
    child = subprocess.run([sys.executable, "-c", SAVE_LIMITED, str(path),
                            str(Path(__file__).parent)],
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
    message = child.stdout.strip()
    assert child.returncode == 0 and "Traceback" not in child.stderr, child.stderr[-2000:]
    assert message.startswith(f"cannot write {path}: ") and "\n" not in message, message
    assert message.endswith("(the previous one is intact)")
    assert ckpt.load(path) == {"epoch": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == [ckpt.LAST]  # no temporary left


def readonly(folder: Path, command: list[str]) -> list[str]:
    """``command`` run with ``folder`` read-only."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return command
    if not shutil.which("unshare"):
        pytest.skip("running as root without unshare: cannot make a folder read-only")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode:
        pytest.skip("running as root and unshare -m is not permitted here")
    return ["unshare", "-m", "sh", "-c",
            'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"',
            str(folder), *command]


def trainer(betons, folder, *extra):
    train, val = betons
    return [sys.executable, str(ROOT / "train_imagenet.py"), "--data.train_dataset", str(train),
            "--data.val_dataset", str(val), "--model.arch", "resnet18",
            "--resolution.min_res", "32", "--resolution.max_res", "32",
            "--validation.resolution", "32", "--training.batch_size", "128",
            "--validation.batch_size", "256", "--data.num_workers", "2",
            "--training.epochs", "1", "--logging.plot", "0", "--logging.folder", str(folder),
            "--logging.run_id", "r", *extra]


def test_read_only_run_folder_is_one_line(digits_betons, tmp_path):
    folder = tmp_path / "runs"
    folder.mkdir()
    r = subprocess.run(readonly(folder, trainer(digits_betons, folder)), cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"train_imagenet.py: error: cannot write {folder / 'r'}: "), last
    assert "Read-only file system" in last or "Permission denied" in last
