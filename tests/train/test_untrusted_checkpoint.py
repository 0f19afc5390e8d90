"""Weights files are untrusted input (issue 24): a checkpoint whose pickle would run code is
refused in one line by predict.py, export.py, --model.weights and --training.resume, and the
code never runs; checkpoints of earlier versions (numpy float64 learning rates) still load;
new checkpoints are plain data; safetensors weights, exported with a checked description, give
the checkpoint's predictions without pickle. Real files: a real pickle payload, real runs."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import EPOCHS, ROOT, args_for, read_log, run

from ffcv_utils.train import checkpoint as ckpt
pytestmark = pytest.mark.timeout(600)  # the shared run may be built in the first test
OLD_GLOBALS = {"numpy._core.multiarray.scalar", "numpy.dtype"}  # and the float64 dtype it builds


class Payload:
    """Unpickling this calls os.system: it creates ``marker``, the sign that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def run_folder_copy(run_dir: Path, folder: Path) -> Path:
    """A run folder with ``run_dir``'s params.json and classes.json (no weights yet)."""
    folder.mkdir()
    for name in ("params.json", "classes.json", "log.jsonl"):
        shutil.copyfile(run_dir / name, folder / name)
    return folder


@pytest.fixture
def hostile(digits_run, tmp_path):
    """``(evil.pt in a run folder, marker)``: a real checkpoint whose pickle runs os.system."""
    _, _, run_dir, _ = digits_run
    folder = run_folder_copy(run_dir, tmp_path / "evil_run")
    marker = tmp_path / "code_ran"
    state = torch.load(run_dir / ckpt.FINAL, weights_only=True)
    torch.save({"model": state, "epoch": 1, "note": Payload(marker)}, folder / "evil.pt")
    return folder / "evil.pt", marker


@pytest.fixture
def old_format(digits_run, tmp_path):
    """The shared run's last checkpoint as earlier versions saved it: learning rates as numpy
    float64 (what the LR list gave), in a run folder of its own."""
    _, _, run_dir, _ = digits_run
    folder = run_folder_copy(run_dir, tmp_path / "old_run")
    state = torch.load(run_dir / ckpt.LAST, weights_only=True)  # new checkpoints: plain data
    for group in state["optimizer"]["param_groups"]:
        group["lr"] = np.float64(group["lr"])
    torch.save(state, folder / ckpt.LAST)
    assert set(torch.serialization.get_unsafe_globals_in_checkpoint(folder / ckpt.LAST)) == \
        OLD_GLOBALS  # really the old format
    return folder / ckpt.LAST


def one_line(stderr: str) -> str:
    [line] = stderr.strip().splitlines()
    return line


def test_new_checkpoints_hold_plain_data_only(digits_run):
    _, _, run_dir, _ = digits_run
    for name in (ckpt.LAST, ckpt.BEST, ckpt.FINAL):
        assert torch.serialization.get_unsafe_globals_in_checkpoint(run_dir / name) == []
    lrs = [g["lr"] for g in torch.load(run_dir / ckpt.LAST, weights_only=True)["optimizer"][
        "param_groups"]]
    assert lrs and all(type(lr) is float for lr in lrs)


def test_predict_refuses_code_in_a_checkpoint_and_never_runs_it(hostile, digits_dir):
    evil, marker = hostile
    image = next((Path(digits_dir) / "val").rglob("*.jpg"))
    result = subprocess.run([sys.executable, str(ROOT / "predict.py"), "--weights", str(evil),
                             str(image)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert line.startswith(f"predict.py: error: --weights (resnet18): {evil}: refused: loading "
                           "it would run code named in the file (posix.system)"), line
    assert f"ffcv-convert-checkpoint {evil} SAFE.pt --i-trust-this-file" in line
    assert not marker.exists()


def test_export_refuses_code_in_a_checkpoint(hostile, tool, tmp_path):
    evil, marker = hostile
    result = tool("export.py", "--weights", evil, "--format", "safetensors")
    assert result.returncode == 2
    assert "refused: loading it would run code named in the file (posix.system)" in one_line(
        result.stderr)
    assert not marker.exists() and not (evil.parent / "model.safetensors").exists()


@pytest.mark.slow  # two trainer processes
@pytest.mark.parametrize("option", ["--model.weights", "--training.resume"])
def test_trainer_refuses_code_in_a_checkpoint(hostile, digits_run, tmp_path, option):
    evil, marker = hostile
    betons = digits_run[0]
    result = run(*args_for(betons, tmp_path, option, evil, "--logging.run_id", "r"), timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert f"{option[2:]}: {evil}: refused: loading it would run code named in the file " \
           "(posix.system)" in line, result.stderr[-2000:]
    assert not marker.exists()


def test_convert_needs_the_flag_and_writes_a_plain_checkpoint(hostile, tool, tmp_path):
    """The one explicit way to load with full pickle: without --i-trust-this-file nothing is
    loaded; with it the payload really runs (the test's file is live) and the output is plain."""
    evil, marker = hostile
    safe = tmp_path / "safe.pt"
    refused = tool("-m ffcv_utils.train.checkpoint", evil, safe)
    assert refused.returncode == 2 and "--i-trust-this-file" in one_line(refused.stderr)
    assert not marker.exists() and not safe.exists()
    done = tool("-m ffcv_utils.train.checkpoint", evil, safe, "--i-trust-this-file")
    assert done.returncode == 0, done.stderr
    assert "full pickle" in done.stderr and marker.exists()  # trusted: its code ran, as warned
    assert torch.serialization.get_unsafe_globals_in_checkpoint(safe) == []
    assert ckpt.load(safe)["note"] == 0  # os.system's exit status, now a plain number


def test_foreign_bytes_are_one_line_not_a_code_warning(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.load(junk)
    assert "would run code" not in str(e.value) and len(str(e.value).splitlines()) == 1


def test_old_format_checkpoint_loads_for_predict_export_and_model_weights(
        old_format, digits_run, digits_dir, tool, tmp_path):
    _, _, run_dir, _ = digits_run
    images = Path(digits_dir) / "val" / "3_three"
    old = tool("predict.py", "--weights", old_format, images)
    new = tool("predict.py", "--weights", run_dir / ckpt.LAST, images)
    assert old.returncode == 0 and old.stdout == new.stdout, old.stderr
    out = tmp_path / "m.pt"
    exported = tool("export.py", "--weights", old_format, "--format", "torchscript", "--out", out,
                    "--check-images", images)
    assert exported.returncode == 0 and out.is_file(), exported.stderr
    from ffcv_utils.train.models import create_model
    model = create_model("resnet18", 10, use_blurpool=True)
    checkpoint, _ = ckpt.load_weights(model, old_format, "model.weights", ema=True)
    assert all(type(g["lr"]) is float for g in checkpoint["optimizer"]["param_groups"])


@pytest.mark.slow  # a trainer process that trains one epoch
def test_old_format_checkpoint_resumes_and_saves_plain_data(old_format, small_digits_betons,
                                                           tmp_path):
    result = run(*args_for(small_digits_betons, tmp_path, "--training.resume", old_format,
                           "--logging.run_id", "resumed", epochs=EPOCHS + 1), timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming from {old_format} after epoch {EPOCHS}" in result.stderr
    saved = tmp_path / "resumed" / ckpt.LAST
    assert torch.serialization.get_unsafe_globals_in_checkpoint(saved) == []
    assert torch.load(saved, weights_only=True)["epoch"] == EPOCHS + 1


@pytest.fixture(scope="module")
def exported_once(digits_run, tmp_path_factory):
    """The shared run's final weights exported as safetensors (checked on the val beton)."""
    from ffcv_utils.tools.export import export
    from ffcv_utils.tools.predict import load_run_model
    _, _, run_dir, _ = digits_run
    out = tmp_path_factory.mktemp("export") / "model.safetensors"
    _, result = export(load_run_model(run_dir / ckpt.FINAL), "safetensors", out)
    assert result["max_abs_diff"] == 0.0  # the very same weights
    return out


@pytest.fixture
def exported(exported_once, tmp_path):
    """A copy of ``exported_once`` and its description that a test may damage."""
    out = tmp_path / exported_once.name
    for name in (out.name, out.name + ".json"):
        shutil.copyfile(exported_once.with_name(name), tmp_path / name)
    return out


def test_safetensors_export_predicts_as_the_checkpoint(exported, digits_run, digits_dir, tool):
    from ffcv_utils.tools.predict import load_run_model, predict
    _, _, run_dir, _ = digits_run
    files = sorted((Path(digits_dir) / "val").rglob("*.jpg"))[::12]
    ref, st = load_run_model(run_dir / ckpt.FINAL), load_run_model(exported)
    (expected, _), (got, _) = predict(ref, files), predict(st, files)
    assert [[c for c, _ in top] for _, top in got] == [[c for c, _ in top] for _, top in expected]
    assert np.allclose([[p for _, p in top] for _, top in got],
                       [[p for _, p in top] for _, top in expected], atol=1e-6)
    logged = read_log(run_dir)[-1]
    assert ref.card == st.card == {"name": run_dir.name, "arch": "resnet18",
                                   "train_resolution": 32, "resolution": 32,
                                   "val_top1": logged["top_1"]}
    assert (st.flip_tta, st.blurpool, st.classes) == (ref.flip_tta, True, ref.classes)
    cli = tool("predict.py", "--weights", exported, Path(digits_dir) / "val" / "0_zero")
    assert cli.returncode == 0 and cli.stdout.count("0_zero") > 10, cli.stderr


@pytest.mark.parametrize("damage,why", [
    (lambda d: None, "no "),
    (lambda d: "{not json", "not valid JSON"),
    (lambda d: dict(d, preprocessing=dict(d["preprocessing"], resolution="32")),
     "preprocessing.resolution: not an integer"),
    (lambda d: dict(d, classes=d["classes"][:-1]), "num_classes: not the number"),
    (lambda d: dict(d, arch=["resnet18"]), "arch: not a model name"),
    (lambda d: dict(d, run=dict(d["run"], val_top1=7)), "run.val_top1"),
    (lambda d: dict(d, preprocessing=dict(d["preprocessing"], mean_0_255=[0, 0, 0])),
     "normalisation"),
], ids=["missing", "malformed", "resolution-type", "classes-length", "arch-type", "top1-range",
        "mean"])
def test_safetensors_with_a_bad_description_is_one_line(exported, digits_dir, tool, damage, why):
    side = exported.with_name(exported.name + ".json")
    bad = damage(json.loads(side.read_text()))
    if bad is None:
        side.unlink()
    else:
        side.write_text(bad if isinstance(bad, str) else json.dumps(bad))
    result = tool("predict.py", "--weights", exported, next((Path(digits_dir) / "val").rglob(
        "*.jpg")))
    assert result.returncode == 2 and why in one_line(result.stderr), result.stderr


def test_damaged_safetensors_is_one_line(exported, tool, digits_dir):
    exported.write_bytes(b"\xff" * 64)
    result = tool("predict.py", "--weights", exported, digits_dir)
    assert result.returncode == 2
    assert "not a readable safetensors file" in one_line(result.stderr)


@pytest.mark.slow  # a trainer process (evaluation only)
def test_model_weights_takes_safetensors(exported, digits_run, tmp_path):
    betons, _, run_dir, _ = digits_run
    result = run(*args_for(betons, tmp_path, "--model.weights", exported,
                           "--training.eval_only", "1", "--logging.run_id", "st"), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    [record] = read_log(tmp_path / "st")
    assert abs(record["top_1"] - read_log(run_dir)[-1]["top_1"]) < 1e-6  # the trained weights


def test_export_temporary_file_never_follows_a_planted_link(digits_run, tool, tmp_path):
    """The old export wrote OUT.tmp, following a symlink planted at that name (it overwrote the
    link's target); the temporary file is now a fresh name only export created."""
    _, _, run_dir, _ = digits_run
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "model.safetensors"
    for planted in (out.with_name(out.name + ".tmp"), out_dir / ".model.safetensors.tmp"):
        planted.symlink_to(target)
    result = tool("export.py", "--weights", run_dir / ckpt.FINAL, "--format", "safetensors",
                  "--out", out)
    assert result.returncode == 0, result.stderr
    assert target.read_text() == "keep me"
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        [".model.safetensors.tmp", "model.safetensors", "model.safetensors.json",
         "model.safetensors.tmp"])
