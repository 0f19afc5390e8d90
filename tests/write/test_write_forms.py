"""The same photos in every form ImageNet ships in (ImageFolder, Kaggle, the official archives +
devkit, a flat folder + CSV, Hugging Face parquet, webdataset shards) written through
``write_ffcv.py``'s own options give the same beton: the same stored JPEG bytes with the same
label for every image, and the same class list."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ffcv_utils.tools import sample_data as sd

ROOT = Path(__file__).resolve().parents[2]
datasets = pytest.importorskip("datasets")
pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]  # a full write per source form


@pytest.fixture(scope="module")
def forms(photos_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("forms")
    return dict(sd.make_source_forms(photos_dir, root / "forms"), out=root / "betons",
                hf_cache=root / "hf_cache")


def write(forms, split, name, *options):
    """Run the real command line; the beton's (sha1 of stored bytes, label) counts and classes."""
    out = forms["out"] / f"{name}_{split}.beton"
    env = {"HF_DATASETS_CACHE": str(forms["hf_cache"]), "HF_HUB_OFFLINE": "1",
           **{k: v for k, v in __import__("os").environ.items() if not k.startswith("HF_")}}
    result = subprocess.run([sys.executable, str(ROOT / "write_ffcv.py"), "--split", split,
                             "--cfg.write_path", str(out), "--cfg.write_mode", "jpg",
                             "--cfg.max_resolution", "1000", "--cfg.num_workers", "2", *options],
                            capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    return stored(out), json.loads(Path(f"{out}.json").read_text())["classes"]


def stored(beton: Path) -> Counter:
    from ffcv.reader import Reader

    r = Reader(str(beton))
    sizes = {int(p): int(s) for p, s in zip(r.alloc_table["ptr"], r.alloc_table["size"])}
    data = np.memmap(beton, dtype=np.uint8, mode="r")
    out = Counter()
    for image, label in zip(r.metadata["f0"], r.metadata["f1"]):
        ptr = int(image["data_ptr"])
        out[(hashlib.sha1(data[ptr:ptr + sizes[ptr]].tobytes()).hexdigest(), int(label))] += 1
    return out


def source_files(photos, split) -> Counter:
    """What every form must store: each photo's own bytes (passthrough) with its label."""
    return Counter((hashlib.sha1(f.read_bytes()).hexdigest(), y)
                   for f, y, _ in sd.photo_set(photos)[split])


def test_every_form_writes_the_same_train_beton(forms, photos_dir):
    want = source_files(photos_dir, "train")
    wnids = [w for w, _ in sd.photo_synsets(3)]
    kaggle = forms["kaggle"]
    betons = {
        "kaggle": write(forms, "train", "kaggle", "--cfg.data_dir", str(kaggle)),
        "archives": write(forms, "train", "archives", "--cfg.data_dir", str(forms["archives"])),
        "wds": write(forms, "train", "wds", "--cfg.wds_shards", str(forms["wds"])),
    }
    for name, (got, classes) in betons.items():
        assert sum(got.values()) == sum(want.values()), name
        assert got == want, name
        assert classes == wnids, name
    got, classes = write(forms, "train", "hf", "--cfg.hf_dataset", str(forms["hf"]))
    assert got == want and classes == [t for _, t in sd.photo_synsets(3)]  # HF's own names


def test_every_form_writes_the_same_val_beton_labelled_like_train(forms, photos_dir):
    want = source_files(photos_dir, "val")
    archives, kaggle = forms["archives"], forms["kaggle"]
    flat_val = sd_kaggle_val(kaggle)
    for name in ("kaggle", "archives", "wds"):  # the train betons the val ones must follow
        if not (forms["out"] / f"{name}_train.beton").exists():  # the train test's, if it ran
            write(forms, "train", name, *({"kaggle": ["--cfg.data_dir", str(kaggle)],
                                           "archives": ["--cfg.data_dir", str(archives)],
                                           "wds": ["--cfg.wds_shards", str(forms["wds"])]}[name]))
    runs = {
        "kaggle": ["--cfg.data_dir", str(kaggle)],
        "archives": ["--cfg.data_dir", str(archives / "ILSVRC2012_img_val.tar"),
                     "--cfg.devkit", str(archives / "ILSVRC2012_devkit_t12.tar.gz")],
        "wds": ["--cfg.wds_shards", str(forms["wds"])],
    }
    for name, options in runs.items():
        got, classes = write(forms, "val", name, *options)
        assert got == want, name
        assert classes == [w for w, _ in sd.photo_synsets(3)], name
    got, _ = write(forms, "val", "kaggle", "--cfg.data_dir", str(flat_val),
                   "--cfg.val_labels", str(forms["csv"]))
    assert got == want


def sd_kaggle_val(kaggle: Path) -> Path:
    return kaggle / "ILSVRC" / "Data" / "CLS-LOC" / "val"
