"""Truncated, empty and foreign betons are refused with one line naming the file, before ffcv
opens them: by ``ffcv_utils.beton.check.check``, the trainer, ``python -m ffcv_utils.tools.inspect_beton`` and the
benchmarks (real betons written by the toolkit, cut or replaced)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ffcv_utils.beton.check import BetonError, check
from ffcv_utils.beton.sidecar import read_info
from helpers import run_script

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(120)


def broken_copy(src: Path, folder: Path, kind: str) -> Path:
    """A copy of ``src`` (with its sidecar) made broken in the way ``kind`` names."""
    dst = folder / f"{kind}-{src.name}"
    shutil.copy(str(src) + ".json", str(dst) + ".json")
    data = src.read_bytes()
    if kind == "empty":
        dst.write_bytes(b"")
    elif kind == "random":
        dst.write_bytes(os.urandom(len(data) // 4))
    elif kind.startswith("cut"):  # cut-<bytes from the end>, or cut-half
        end = len(data) // 2 if kind == "cut-half" else len(data) - int(kind.split("-")[1])
        dst.write_bytes(data[:end])
    elif kind == "sidecar":
        dst.write_bytes(data)
        info = json.loads(Path(str(dst) + ".json").read_text())
        info["num_samples"] += 5
        Path(str(dst) + ".json").write_text(json.dumps(info))
    return dst


CASES = {"empty": "empty file", "random": "not a .beton of ffcv format 2",
         "cut-half": "truncated", "cut-10": "allocation table is misplaced or cut",
         "cut-24": "some samples point at data the allocation table lacks",
         "cut-1000000": "truncated", "sidecar": "says"}


@pytest.mark.parametrize("split", [0, 1], ids=["train", "val"])
def test_check_refuses_broken_betons_with_one_line(digits_betons, tmp_path, split):
    good = digits_betons[split]
    assert check(good) == read_info(good)["num_samples"]
    for kind, words in CASES.items():
        bad = broken_copy(good, tmp_path, kind)
        with pytest.raises(BetonError) as err:
            check(bad, "data.x")
        message = str(err.value)
        assert message.startswith(f"data.x: {bad}: ") and words in message, (kind, message)
        assert "\n" not in message


def test_inspect_refuses_a_truncated_beton(digits_betons, tmp_path, capsys, monkeypatch):
    bad = broken_copy(digits_betons[1], tmp_path, "cut-half")
    code, _, err = run_script("-m ffcv_utils.tools.inspect_beton", [bad], capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [
        f"python -m ffcv_utils.tools.inspect_beton: error: {bad}: truncated: "
        + err.split(": truncated: ", 1)[1].strip()]


def test_trainer_refuses_broken_betons_with_one_line(digits_betons, tmp_path, capsys,
                                                     monkeypatch):
    from ffcv_utils.train.config import load_config
    from ffcv_utils.beton.check import check_trainer_betons

    train, val = digits_betons
    bad_train = broken_copy(train, tmp_path, "cut-half")
    code, _, err = run_script("train_imagenet.py", [
        "--data.train_dataset", bad_train, "--data.val_dataset", val,
        "--logging.folder", tmp_path / "runs"], capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"train_imagenet.py: error: data.train_dataset: {bad_train}: truncated: "), lines
    assert not (tmp_path / "runs").exists()  # refused before anything was written
    # the val beton goes through the same check (in process: the trainer calls exactly this)
    bad_val = broken_copy(val, tmp_path, "random")
    for eval_only in ("0", "1"):
        p, _ = load_config(["--data.train_dataset", str(train), "--data.val_dataset",
                            str(bad_val), "--training.eval_only", eval_only,
                            "--model.pretrained", "1"])
        with pytest.raises(BetonError, match=f"^data.val_dataset: {bad_val}: not a .beton"):
            check_trainer_betons(p)


def test_benchmark_refuses_a_truncated_beton(digits_betons, tmp_path):
    bad = broken_copy(digits_betons[0], tmp_path, "cut-24")
    r = subprocess.run([sys.executable, "benchmarks/profile_loader.py", "--beton", str(bad)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"error: --beton: {bad}: some samples point at data" in r.stderr.splitlines()[-1]


def test_loaders_check_their_beton(digits_betons, tmp_path):
    """find_lr.py, export.py and the benchmarks open betons through these two functions."""
    from ffcv_utils.load.loaders import train_loader, val_loader

    bad = broken_copy(digits_betons[0], tmp_path, "cut-24")
    for make in (train_loader, val_loader):
        with pytest.raises(BetonError, match=f"^{bad}: some samples point at data"):
            make(str(bad), batch_size=8, num_workers=1, res=32)


def test_a_file_found_sound_is_checked_again_once_it_changes(digits_betons, tmp_path):
    # check() remembers sound files (trainer and loaders check the same beton); a file cut
    # after a good check must still be refused.
    good = tmp_path / "copy.beton"
    shutil.copy(digits_betons[0], good)
    shutil.copy(str(digits_betons[0]) + ".json", str(good) + ".json")
    assert check(good) == check(good) > 0
    good.write_bytes(good.read_bytes()[:-48])
    with pytest.raises(BetonError, match="copy.beton"):
        check(good)


def test_all_in_is_set_membership():
    """The check's membership test (sorted table + binary search) agrees with np.isin."""
    import numpy as np

    from ffcv_utils.beton.check import all_in

    known = np.array([40, 8, 1 << 40, 16], np.uint64)  # unsorted, as an allocation table may be
    assert all_in(np.array([8, 16, 40, 1 << 40, 8], np.uint64), known)
    assert all_in(np.array([], np.uint64), known)
    assert not all_in(np.array([8, 24], np.uint64), known)           # a gap between entries
    assert not all_in(np.array([(1 << 40) + 1], np.uint64), known)   # past the last entry
    assert not all_in(np.array([0], np.uint64), known)               # before the first
    assert not all_in(np.array([8], np.uint64), np.array([], np.uint64))
    rng = np.random.default_rng(0)
    table = rng.choice(1 << 48, 5000, replace=False).astype(np.uint64)
    probe = np.concatenate([table[::7], rng.integers(0, 1 << 48, 50).astype(np.uint64)])
    for chunk in np.array_split(probe, 40):
        assert all_in(chunk, table) == bool(np.isin(chunk, table).all())
