"""The writer's Source interface: a layout written in a few lines (here, encoded images held in
memory, as an archive or parquet source yields them) is packed by the real writer processes
into a beton that ffcv reads back, with the generic checks (decoding, subset, val class list)
for free."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from ffcv_utils.beton import sidecar as dataset_info
from ffcv_utils.base.cli import UserError
from ffcv_utils.write.sources.base import Sample, Source
from ffcv_utils.write.writer import write_source


def _encoded(seed: int, fmt: str = "JPEG") -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(small).resize((40, 30), Image.BILINEAR).save(buf, fmt)
    return buf.getvalue()


class InMemory(Source):
    """Images as bytes, one class per letter of the label names; iterable only (no indexing),
    as a stream is. Counts its passes, so a test can see it is re-read, not held."""

    def __init__(self, items: list[tuple[str, int, bytes]], classes: list[str]):
        self.items, self.classes = items, classes
        self.skipped = [("notes.txt", "not an image file name")]
        self.passes = 0

    def __iter__(self):
        self.passes += 1
        for name, label, data in self.items:
            yield Sample(name, label, data=data)

    def __len__(self):
        return len(self.items)

    def describe(self):
        return "memory"


@pytest.fixture
def source():
    items = [(f"img{i:02d}.{'png' if i % 3 else 'jpg'}", i % 3,
              _encoded(i, "PNG" if i % 3 else "JPEG")) for i in range(30)]
    items.insert(7, ("broken.jpg", 1, _encoded(99)[:200]))  # truncated: skipped by the check
    return InMemory(items, ["ant", "bee", "cat"])


def test_a_custom_bytes_source_packs_into_a_beton_ffcv_reads(source, tmp_path):
    from ffcv.reader import Reader

    target = tmp_path / "train.beton"
    s = write_source(source, target, split="train", max_resolution=32, write_mode="raw",
                     num_workers=2, chunk_size=4, progress=False)
    good = [(n, lab) for n, lab, _ in source.items if n != "broken.jpg"]
    assert s["images"] == 30 and s["classes"] == ["ant", "bee", "cat"]
    meta = Reader(str(target)).metadata
    assert meta["f1"].astype(int).tolist() == [lab for _, lab in good]  # source order kept
    assert (meta["f0"]["width"] == 32).all() and (meta["f0"]["height"] == 24).all()
    info = dataset_info.read_info(target)
    assert info["source"] == "memory" and info["class_counts"] == {"ant": 10, "bee": 10,
                                                                   "cat": 10}
    assert {i["file"] for i in info["skipped"]} == {"notes.txt", "broken.jpg"}
    assert source.passes == 2  # checked, then read again to pack: no bytes held in between
    assert not list(tmp_path.glob(".*tmp"))


def test_subset_and_val_class_list_apply_to_any_source(source, tmp_path):
    s = write_source(source, tmp_path / "sub.beton", split="train", subset=5,
                     max_resolution=32, num_workers=1, progress=False)
    assert sorted(s["class_counts"].values()) == [1, 2, 2]
    write_source(source, tmp_path / "train.beton", split="train", max_resolution=32,
                 num_workers=1, progress=False)
    other = InMemory(source.items, ["ant", "bee", "dog"])
    with pytest.raises(UserError, match="class list from .*train.beton.json.*different class"):
        write_source(other, tmp_path / "val.beton", split="val", num_workers=1,
                     progress=False)
    assert not (tmp_path / "val.beton").exists()
