"""Trainer options the docs promise, each in a real one-epoch run on the small digits betons
that starts from the shared run's trained weights at a tiny LR: what the run computes stays
recognisable (well above chance, 0.1), which a broken decoder, precision or compiled model would
not give. ``data.decoder ffcv`` (the stock decoders) trains and validates end to end;
``training.precision bf16`` runs on CPU; ``training.compile 1`` compiles (slow: inductor builds
C++ kernels) and still writes weights for the stock model."""
from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch
import torchvision

from helpers import ROOT, args_for, command, read_log

pytestmark = [pytest.mark.timeout(400), pytest.mark.slow]  # trainer runs


def finetune(digits_run, betons, folder, run_id, *extra, env=None):
    """Start a one-epoch run from the shared run's final weights (LR 0.001)."""
    weights = digits_run[2] / "final_weights.pt"
    args = args_for(betons, folder, "--model.weights", str(weights), "--lr.lr", "0.001",
                    "--logging.run_id", run_id, *extra, epochs=1)
    return subprocess.Popen(command(*args), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def outcome(proc, timeout=300):
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, err


@pytest.fixture(scope="module")
def option_runs(digits_run, small_digits_betons, tmp_path_factory):
    """The stock-decoder and bf16 runs, started together: ``{name: (run_dir, rc, stderr)}``."""
    folder = tmp_path_factory.mktemp("options")
    procs = {"ffcv": finetune(digits_run, small_digits_betons, folder, "ffcv",
                              "--data.decoder", "ffcv"),
             "bf16": finetune(digits_run, small_digits_betons, folder, "bf16",
                              "--training.precision", "bf16")}
    return {name: (folder / name, *outcome(proc)) for name, proc in procs.items()}


def check_recognisable(run_dir, rc, err, digits_run):
    assert rc == 0, err[-3000:]
    assert "Traceback" not in err
    [record] = read_log(run_dir)
    trained = read_log(digits_run[2])[-1]
    assert record["val_images"] == 100 and record["train_images"] == 320
    assert record["top_1"] > 0.3, (record, trained)  # chance: 0.1
    assert record["train_loss"] < 0.5 * (trained["train_loss"] + 2.3), (record, trained)
    return json.loads((run_dir / "params.json").read_text())


def test_stock_ffcv_decoder_trains_and_validates_end_to_end(option_runs, digits_run):
    params = check_recognisable(*option_runs["ffcv"], digits_run)
    assert params["data.decoder"] == "ffcv"


def test_bf16_trains_on_cpu(option_runs, digits_run):
    params = check_recognisable(*option_runs["bf16"], digits_run)
    assert params["derived.precision"] == "bfloat16"


def test_compiled_model_trains_and_writes_weights_for_the_stock_model(
        digits_run, small_digits_betons, tmp_path):
    cache = tmp_path / "inductor"
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache))
    proc = finetune(digits_run, small_digits_betons, tmp_path, "compiled",
                    "--training.compile", "1", env=env)
    params = check_recognisable(tmp_path / "compiled", *outcome(proc, 380), digits_run)
    assert params["training.compile"] == 1
    assert any(cache.rglob("*.py")), "torch.compile wrote no kernels: the model ran eagerly"
    plain = torchvision.models.resnet18(num_classes=10)  # no _orig_mod. prefixes left
    plain.load_state_dict(torch.load(tmp_path / "compiled" / "final_weights.pt",
                                     weights_only=True))
