"""python -m ffcv_utils.tools.inspect_beton: what it reports must match the beton and its sidecar."""
from __future__ import annotations

import os

import numpy as np
import pytest

from ffcv_utils.beton import sidecar as dataset_info
from ffcv_utils.base.cli import UserError
from ffcv_utils.tools.inspect_beton import inspect_beton, main


def test_facts_match_the_sidecar_and_the_folder(digits_betons, digits_dir):
    train, val = digits_betons
    r = inspect_beton(train)
    info = dataset_info.read_info(train)
    folder = digits_dir / "train"
    assert r["samples"] == info["num_samples"] == sum(1 for _ in folder.rglob("*.jpg"))
    assert r["classes"] == sorted(p.name for p in folder.iterdir())
    assert dict(zip(r["classes"], r["label_counts"].tolist())) == info["class_counts"]
    assert r["width_min"] == r["width_max"] == 32  # digits were written at 32x32
    assert 0.3 < r["jpeg_share"] < 0.7  # proportion mode, probability 0.5
    assert r["bytes"] == train.stat().st_size
    assert r["fields"] == {"image": "RGBImageField", "label": "IntField"}
    assert r["problems"] == []


def test_main_prints_tables_and_agrees(digits_betons, capsys):
    train, val = digits_betons
    assert main([str(train), str(val)]) == 0
    out = capsys.readouterr().out
    assert "train.beton" in out and "val.beton" in out
    assert "3_three" in out  # class names from the sidecar
    assert "class lists agree across files" in out
    assert "problem" not in out


def test_problems_are_reported(digits_betons, tmp_path, capsys):
    train, val = digits_betons
    odd = tmp_path / "odd.beton"
    os.symlink(train, odd)
    info = dataset_info.read_info(train)
    info["classes"] = list(reversed(info["classes"]))  # same names, other order
    dataset_info.write_info(odd, info)
    assert main([str(val), str(odd)]) == 1
    out = capsys.readouterr().out
    assert "problem: class lists of val.beton and odd.beton differ" in out
    assert "problem: " in out and "per-class counts" in out

    bare = tmp_path / "bare.beton"
    os.symlink(train, bare)
    r = inspect_beton(bare)
    assert r["classes"] is None and "no sidecar" in r["problems"][0]
    assert r["label_counts"].sum() == r["samples"]


def test_missing_or_bogus_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        inspect_beton(tmp_path / "none.beton")
    junk = tmp_path / "junk.beton"
    junk.write_bytes(np.random.default_rng(0).bytes(100))
    with pytest.raises(UserError, match=r"junk.beton: not a .beton of ffcv format"):
        inspect_beton(junk)


def test_many_classes_are_summarised(capsys):
    from ffcv_utils.tools.inspect_beton import _report

    names = [f"n{i:08d}" for i in range(1000)]
    counts = np.full(1000, 1300)
    counts[[7, 500]] = (732, 1)
    result = {"path": "train.beton", "bytes": 10**9, "samples": int(counts.sum()),
              "classes": names, "label_counts": counts, "sidecar": None, "problems": [],
              "fields": {}}
    assert _report([result], all_classes=False) == 0
    out = capsys.readouterr().out
    assert "1000 classes" in out
    smallest = out.split("smallest classes:")[1]
    assert smallest.index("n00000500") < smallest.index("n00000007")  # 1 image, then 732
    assert len(out.splitlines()) < 30
    assert _report([result], all_classes=True) == 0
    assert "n00000999" in capsys.readouterr().out
