"""Any timm model through the whole toolkit: ``--model.arch timm:NAME`` trains on the digits
betons (a CNN and a ViT, whose dynamic image size lets the resolution change between epochs),
evaluates, and its final weights go through predict.py and export.py --format onnx (run in
process, conftest.py's ``tool``)."""
from __future__ import annotations

import json
import re

import pytest

from helpers import args_for, read_log, run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
CHANCE = 0.1  # 10 classes; +-0.016 on the 363 val images


@pytest.mark.parametrize("arch, extra, bar", [
    ("timm:resnet10t", ["--training.epochs", "2"], 0.3),
    # a small ViT: AdamW, 32 then 48 px (dynamic image size), evaluated at 48 px
    ("timm:test_vit", ["--training.epochs", "2", "--training.optimizer", "adamw",
                       "--lr.lr", "0.002", "--training.weight_decay", "0.05",
                       "--training.batch_size", "16", "--lr.batch_size_for_lr", "16",
                       "--lr.lr_peak_epoch", "0.5", "--resolution.schedule", "0,32;1,48",
                       "--validation.resolution", "48"], 0.18),
])
def test_timm_model_trains_predicts_and_exports(digits_betons, digits_dir, tmp_path, tool, arch,
                                                extra, bar):
    result = run(*args_for(digits_betons, tmp_path, "--model.arch", arch, *extra,
                           "--logging.run_id", "t"))
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "t"
    log = read_log(run_dir)
    assert log[-1]["top_1"] > bar > CHANCE, log
    blur = re.search(r"BlurPool on (\d+) strided conv", result.stderr)
    assert blur and (int(blur.group(1)) > 0) == ("vit" not in arch), result.stderr[-2000:]
    weights = run_dir / "final_weights.pt"

    predicted = tool("predict.py", "--weights", str(weights), str(digits_dir / "val"))
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    top1 = re.search(r"accuracy on 363 labelled images: top-1 ([0-9.]+)", predicted.stdout)
    # the same images through PIL + OpenCV instead of the beton: the same model's accuracy
    assert top1 and float(top1.group(1)) == pytest.approx(log[-1]["top_1"], abs=0.05)
    evaluated = run(*args_for(digits_betons, tmp_path, "--model.arch", arch, *extra,
                              "--training.eval_only", "1", "--model.weights", str(weights),
                              "--logging.run_id", "e"))
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    [record] = read_log(tmp_path / "e")
    assert record["top_1"] == pytest.approx(log[-1]["top_1"], abs=1.5 / 363)

    exported = tool("export.py", "--weights", str(weights), "--format", "onnx")
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert "matches PyTorch on" in exported.stdout and (run_dir / "model.onnx").is_file()
    side = json.loads((run_dir / "model.onnx.json").read_text())
    assert len(side["classes"]) == 10
