"""The project's real train and val loaders fetch batches from a written beton, in a subprocess
under a timeout: if a pipeline that makes ffcv 1.0.2's Loader hang comes back (jitted ->
non-jitted -> jitted, e.g. NormalizeImage on CPU after ToTorchImage; upstream issue 396, stuck
in Graph.group_operations), this test fails instead of hanging the suite."""
from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = r"""
import sys
import torch
from ffcv_utils.load.loaders import normalize, train_loader, val_loader

train, val = sys.argv[1], sys.argv[2]
data = train_loader(train, batch_size=64, num_workers=2, res=32, seed=0)
batches = 0
for images, labels in data.loader:
    assert images.shape == (64, 3, 32, 32) and images.dtype == torch.uint8, images.shape
    assert labels.shape == (64,) and int(labels.max()) < 10
    x = normalize(images)
    assert x.dtype == torch.float32 and abs(float(x.mean())) < 3
    batches += 1
    if batches == 3:
        break
seen = 0
for images, labels in val_loader(val, batch_size=100, num_workers=2, res=32):
    assert images.shape[1:] == (3, 32, 32)
    seen += len(labels)
print("OK", batches, seen)
"""


def test_train_and_val_loaders_deliver_batches_without_hanging(digits_betons):
    train, val = digits_betons
    try:
        r = subprocess.run([sys.executable, "-c", SCRIPT, str(train), str(val)],
                           capture_output=True, text=True, timeout=150)
    except subprocess.TimeoutExpired:
        pytest.fail("the ffcv Loader hung for 150 s: is a pipeline going jitted -> non-jitted "
                    "-> jitted again (ffcv issue 396)? See ffcv_utils/load/loaders.py")
    assert r.returncode == 0, r.stderr[-3000:]
    from ffcv_utils.beton.sidecar import read_info

    assert r.stdout.split()[-3:] == ["OK", "3", str(read_info(val)["num_samples"])]
