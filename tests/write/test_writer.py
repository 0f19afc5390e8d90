"""ffcv_utils.write.writer.write_split on real folders, read back with the real ffcv Reader/Loader."""
from __future__ import annotations

import gc
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ffcv_utils.beton import sidecar as dataset_info
from ffcv_utils.base.cli import UserError
from ffcv_utils.write.writer import write_split

W, H = 48, 40  # small but not square, so a transposed image would show


def _photo(seed: int) -> np.ndarray:
    """A smooth RGB image (JPEG-friendly) that differs per seed."""
    y, x = np.mgrid[0:H, 0:W]
    rng = np.random.default_rng(seed)
    a, b, c = rng.uniform(0.5, 3, 3)
    img = np.stack([x * a, y * b, (x + y) * c], axis=-1) % 256
    return img.astype(np.uint8)


def _stored_pixels(beton: Path, index: int) -> np.ndarray:
    """The raw pixels of sample ``index`` exactly as stored (write_mode='raw')."""
    from ffcv.reader import Reader

    meta = Reader(str(beton)).metadata[index]["f0"]
    assert meta["mode"] == 1, "expected a raw-mode image"
    h, w = int(meta["height"]), int(meta["width"])
    data = np.fromfile(beton, dtype=np.uint8, count=h * w * 3, offset=int(meta["data_ptr"]))
    return data.reshape(h, w, 3)


def _labels(beton: Path) -> np.ndarray:
    from ffcv.reader import Reader

    return Reader(str(beton)).metadata["f1"].astype(int)


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """An ImageFolder with every kind of mess the writer must survive.

    Returns (root, expected) where expected maps class -> list of file names that must be
    written (in order); the skipped files and their reasons are in expected['_skipped'].
    """
    root = tmp_path_factory.mktemp("messy") / "data"
    train = root / "train"
    exp: dict[str, list[str]] = {}

    def save(cls, name, img: Image.Image | None = None, raw: bytes | None = None, **kw):
        d = train / cls
        d.mkdir(parents=True, exist_ok=True)
        if raw is not None:
            (d / name).write_bytes(raw)
        else:
            img.save(d / name, **kw)

    # a_gray: grayscale JPEGs
    for i in range(3):
        save("a_gray", f"g{i}.jpg", Image.fromarray(_photo(i)).convert("L"), quality=95)
    exp["a_gray"] = ["g0.jpg", "g1.jpg", "g2.jpg"]
    # b_cmyk: CMYK JPEG (and one RGB, with an upper-case extension)
    save("b_cmyk", "c0.jpg", Image.fromarray(_photo(10)).convert("CMYK"), quality=95)
    save("b_cmyk", "c1.JPEG", Image.fromarray(_photo(11)), quality=95)
    exp["b_cmyk"] = ["c0.jpg", "c1.JPEG"]
    # c_png: RGBA with a fully transparent left half, palette with a transparent index,
    # palette without transparency, LA
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., :3] = (10, 200, 30)
    rgba[:, W // 2:, 3] = 255
    save("c_png", "rgba.png", Image.fromarray(rgba, "RGBA"))
    pal = Image.new("P", (W, H), 0)
    pal.putpalette([0, 0, 0, 200, 20, 20] + [0] * (256 * 3 - 6))
    pal.paste(1, (0, 0, W // 2, H))  # left half index 1 (red), right half index 0
    pal.info["transparency"] = 0
    save("c_png", "pal_t.png", pal, transparency=0)
    pal2 = Image.fromarray(_photo(20)).convert("P", palette=Image.ADAPTIVE, colors=16)
    save("c_png", "pal.png", pal2)
    la = Image.fromarray(np.dstack([np.full((H, W), 80, np.uint8),
                                    np.full((H, W), 255, np.uint8)]), "LA")
    save("c_png", "z_la.png", la)
    exp["c_png"] = ["pal.png", "pal_t.png", "rgba.png", "z_la.png"]
    # d_16bit: 16-bit grayscale PNG with known levels
    g16 = np.zeros((H, W), np.uint16)
    g16[:, :16] = 0
    g16[:, 16:32] = 32896  # 128 * 257
    g16[:, 32:] = 65535
    save("d_16bit", "g16.png", Image.fromarray(g16))
    exp["d_16bit"] = ["g16.png"]
    # e_bad: good JPEGs, a nested folder, and files that must be skipped
    save("e_bad", "good0.jpg", Image.fromarray(_photo(30)), quality=90)
    (train / "e_bad" / "nested").mkdir(parents=True, exist_ok=True)
    Image.fromarray(_photo(31)).save(train / "e_bad" / "nested" / "good1.jpg", quality=90)
    full = (train / "e_bad" / "good0.jpg").read_bytes()
    save("e_bad", "truncated.jpg", raw=full[: len(full) // 2])
    save("e_bad", "zero.jpg", raw=b"")
    save("e_bad", "notes.txt", raw=b"these are not pixels\n")
    save("e_bad", "photo_without_extension", Image.fromarray(_photo(32)), format="JPEG")
    save("e_bad", ".DS_Store", raw=b"\x00\x01hidden")  # hidden: not even a candidate
    exp["e_bad"] = ["good0.jpg", "photo_without_extension", "nested/good1.jpg"]
    # f_empty: an empty class folder; g_only_bad: a class whose only file is unreadable
    (train / "f_empty").mkdir(parents=True)
    save("g_only_bad", "broken.png", raw=b"\x89PNG\r\n\x1a\n garbage")
    exp["f_empty"] = []
    exp["g_only_bad"] = []
    (train / ".hidden_class").mkdir()
    save(".hidden_class", "x.jpg", Image.fromarray(_photo(40)), quality=90)
    exp["_skipped"] = {
        "e_bad/truncated.jpg": "unreadable",
        "e_bad/zero.jpg": "empty file",
        "e_bad/notes.txt": "not an image",
        "g_only_bad/broken.png": "",
    }
    # val: a subset of the classes, in a folder that lacks most train classes
    for cls, seed in (("b_cmyk", 50), ("a_gray", 51)):
        d = root / "val" / cls
        d.mkdir(parents=True)
        Image.fromarray(_photo(seed)).save(d / "v.jpg", quality=90)
    return root, exp


@pytest.fixture(scope="module")
def messy_written(messy, tmp_path_factory):
    root, exp = messy
    out = tmp_path_factory.mktemp("messy_out")
    train = write_split(root, "train", out / "train.beton", max_resolution=64,
                        write_mode="raw", num_workers=2, progress=False, shuffle=False)
    val = write_split(root / "val", "val", out / "val.beton", max_resolution=64,
                      write_mode="raw", num_workers=1, progress=False)
    return out, train, val


def test_messy_folder_writes_every_readable_image_in_imagefolder_order(messy, messy_written):
    root, exp = messy
    out, s, _ = messy_written
    classes = sorted(k for k in exp if not k.startswith("_"))
    assert s["classes"] == classes  # hidden folder excluded, empty ones kept
    expected = [(c, f) for c in classes for f in exp[c]]
    assert s["images"] == len(expected) == 13
    assert s["class_counts"] == {c: len(exp[c]) for c in classes}
    labels = _labels(out / "train.beton")
    assert labels.tolist() == [classes.index(c) for c, _ in expected]
    # the empty classes keep their indices: nothing shifted after them
    assert classes.index("f_empty") == 5 and classes.index("g_only_bad") == 6
    assert s["empty_classes"] == ["f_empty", "g_only_bad"]
    assert any("f_empty" in w and "label 5" in w for w in s["warnings"])


def test_unreadable_files_are_skipped_listed_and_explained(messy, messy_written):
    _, exp = messy
    out, s, _ = messy_written
    skipped = {item["file"]: item["reason"] for item in s["skipped_files"]}
    assert set(skipped) == set(exp["_skipped"])  # .DS_Store is not even a candidate
    for name, word in exp["_skipped"].items():
        assert word in skipped[name]
    assert s["skipped"] == 4
    info = dataset_info.read_info(out / "train.beton")
    assert info["num_skipped"] == 4
    assert {i["file"] for i in info["skipped"]} == set(exp["_skipped"])
    assert info["classes"] == s["classes"]
    assert info["num_samples"] == 13
    assert info["settings"]["write_mode"] == "raw"
    assert info["settings"]["max_resolution"] == 64


def test_colour_modes_become_the_right_rgb_pixels(messy, messy_written):
    root, exp = messy
    out, s, _ = messy_written
    beton = out / "train.beton"
    order = [(c, f) for c in s["classes"] for f in exp[c]]
    idx = {cf: i for i, cf in enumerate(order)}

    gray = _stored_pixels(beton, idx[("a_gray", "g1.jpg")])
    assert gray.shape == (H, W, 3)
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    expected_gray = np.asarray(Image.open(root / "train/a_gray/g1.jpg"))
    assert np.array_equal(gray[..., 0], expected_gray)

    cmyk = _stored_pixels(beton, idx[("b_cmyk", "c0.jpg")]).astype(int)
    assert np.abs(cmyk - _photo(10).astype(int)).mean() < 12  # real colours, not inverted

    rgba = _stored_pixels(beton, idx[("c_png", "rgba.png")])
    assert (rgba[:, : W // 2] == 255).all()  # transparent -> white
    assert (rgba[:, W // 2:] == (10, 200, 30)).all()

    pal_t = _stored_pixels(beton, idx[("c_png", "pal_t.png")])
    assert (pal_t[:, : W // 2] == (200, 20, 20)).all()
    assert (pal_t[:, W // 2:] == 255).all()  # transparent palette index -> white

    la = _stored_pixels(beton, idx[("c_png", "z_la.png")])
    assert (la == 80).all()

    g16 = _stored_pixels(beton, idx[("d_16bit", "g16.png")])
    assert (g16[:, :16] == 0).all() and (g16[:, 16:32] == 128).all()
    assert (g16[:, 32:] == 255).all()  # scaled, not clipped


def test_val_takes_train_class_order_even_when_classes_are_missing(messy_written):
    out, train, val = messy_written
    # val/ has only a_gray and b_cmyk; the train sidecar beside val.beton sets the order
    assert val["classes"] == train["classes"]
    assert val["class_list_from"] == str(out / "train.beton.json")
    assert val["images"] == 2
    assert _labels(out / "val.beton").tolist() == [0, 1]
    assert any("have no folder" in w for w in val["warnings"])
    assert dataset_info.read_info(out / "val.beton")["classes"] == train["classes"]
    assert dataset_info.class_list_mismatch(dataset_info.read_info(out / "train.beton"),
                                            dataset_info.read_info(out / "val.beton")) is None


def test_val_class_not_in_train_list_is_refused(messy, messy_written, tmp_path):
    root, _ = messy
    out, _, _ = messy_written
    extra = tmp_path / "val"
    (extra / "zz_new_class").mkdir(parents=True)
    Image.fromarray(_photo(60)).save(extra / "zz_new_class" / "x.jpg")
    target = tmp_path / "val.beton"
    with pytest.raises(UserError, match="zz_new_class.*not in the class list"):
        write_split(extra, "val", target, class_list=out / "train.beton", progress=False)
    assert not target.exists()
    assert os.listdir(tmp_path) == ["val"]  # no temporary file left behind


def test_round_trip_digits_through_the_ffcv_loader(digits_dir, digits_betons):
    """ImageFolder -> beton -> the project's val loader: same count, labels and class list; val
    in folder order, train shuffled so that every stretch of it mixes the classes."""
    from ffcv_utils.load.loaders import val_loader

    for split, beton in zip(("train", "val"), digits_betons):
        folder = Path(digits_dir) / split
        classes = sorted(p.name for p in folder.iterdir())
        expected = [classes.index(p.parent.name) for c in classes
                    for p in sorted((folder / c).iterdir())]
        info = dataset_info.read_info(beton)
        assert info["classes"] == classes
        assert info["class_counts"] == {c: len(list((folder / c).iterdir())) for c in classes}
        loader = val_loader(str(beton), batch_size=100, num_workers=2, res=32)
        got, shapes = [], set()
        for images, labels in loader:
            got.extend(labels.tolist())  # copy now: ffcv reuses its batch buffers
            shapes.add(tuple(images.shape[1:]))
        if split == "val":
            assert got == expected
        else:
            assert sorted(got) == sorted(expected) and got != expected
            assert all(len(set(got[i:i + 100])) == 10 for i in range(0, len(got) - 100, 100))
        assert shapes == {(3, 32, 32)}
        del loader, images, labels
        gc.collect()  # run numba's finalizers here, under this test's warning filter


def test_proportion_mode_is_reproducible_and_close_to_the_probability(photos_dir, tmp_path):
    a = write_split(photos_dir, "train", tmp_path / "a.beton", max_resolution=96,
                    num_workers=2, progress=False)
    b = write_split(photos_dir, "train", tmp_path / "b.beton", max_resolution=96,
                    num_workers=1, chunk_size=7, progress=False)
    from ffcv.reader import Reader

    ma = Reader(str(tmp_path / "a.beton")).metadata
    mb = Reader(str(tmp_path / "b.beton")).metadata
    assert a["images"] == b["images"] == 60
    assert np.array_equal(ma["f0"]["mode"], mb["f0"]["mode"])  # same JPEG/raw choice per image
    assert np.array_equal(ma["f1"], mb["f1"])
    assert 0.25 < np.mean(ma["f0"]["mode"] == 0) < 0.75
    assert max(ma["f0"]["width"].max(), ma["f0"]["height"].max()) == 96  # longest side capped


def test_subset_spreads_over_classes(photos_dir, tmp_path):
    s = write_split(photos_dir, "train", tmp_path / "s.beton", max_resolution=32, subset=7,
                    num_workers=1, progress=False)
    assert s["images"] == 7
    assert sorted(s["class_counts"].values()) == [2, 2, 3]


def test_bad_inputs_raise_user_errors_naming_the_path(tmp_path, messy):
    root, _ = messy
    with pytest.raises(UserError, match="not found: .*nope"):
        write_split(tmp_path / "nope", "train", tmp_path / "x.beton", progress=False)
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.jpg").write_bytes(b"")
    with pytest.raises(UserError, match="no class folders in .*flat"):
        write_split(tmp_path / "flat", "train", tmp_path / "x.beton", progress=False)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(UserError, match="a_file"):
        write_split(root, "train", blocker / "x.beton", progress=False)
    with pytest.raises(UserError, match="write_mode"):
        write_split(root, "train", tmp_path / "x.beton", write_mode="png", progress=False)
    only_bad = tmp_path / "only_bad"
    (only_bad / "c").mkdir(parents=True)
    (only_bad / "c" / "x.txt").write_text("hi")
    with pytest.raises(UserError, match="no readable images"):
        write_split(only_bad, "train", tmp_path / "y.beton", progress=False)
    assert not list(tmp_path.glob("*.beton")) and not list(tmp_path.glob(".*.tmp"))


def test_sidecar_is_replaced_with_the_beton(messy_written, tmp_path, messy):
    """Rewriting a beton replaces its sidecar too (no stale class list beside new data)."""
    root, _ = messy
    target = tmp_path / "t.beton"
    dataset_info.write_info(target, {"classes": ["stale"]})
    s = write_split(root, "train", target, max_resolution=16, num_workers=1, progress=False)
    assert json.loads(Path(s["sidecar"]).read_text())["classes"] == s["classes"]


@pytest.mark.timeout(60)
def test_a_file_that_breaks_after_the_check_fails_the_write_instead_of_hanging(tmp_path):
    """ffcv's own writer would wait forever for a sample whose process died; ours reports it."""
    import psutil
    from ffcv.fields import IntField, RGBImageField

    from ffcv_utils.write.pack import WriteError, write_beton
    from ffcv_utils.write.sources.base import Sample
    from ffcv_utils.write.image_field import ImageJob

    good, bad = tmp_path / "good.jpg", tmp_path / "bad.jpg"
    Image.fromarray(_photo(1)).save(good)
    bad.write_bytes(b"garbage, written after the check pass")
    ok, broken = (Sample("good.jpg", 0, path=str(good)), None), (Sample("bad.jpg", 1,
                                                                        path=str(bad)), None)
    samples = [ok] * 40 + [broken] + [ok] * 40
    fields = {"image": RGBImageField(write_mode="raw"), "label": IntField()}

    def helpers():
        return {p.pid for p in psutil.Process().children(recursive=True)
                if "resource_tracker" not in " ".join(p.cmdline())}

    before = helpers()
    with pytest.raises(WriteError, match="bad.jpg could not be read"):
        write_beton(tmp_path / "x.beton", fields, iter(samples), len(samples),
                    ImageJob("raw", 0.5),
                    num_workers=2, chunk_size=8, page_size=1 << 23, progress=False)
    assert helpers() <= before  # both writer processes are gone


def test_class_lists_from_a_beton_a_json_or_a_text_file(messy_written, tmp_path):
    from ffcv_utils.write.writer import read_class_list

    out, train, _ = messy_written
    assert read_class_list(out / "train.beton") == train["classes"]
    assert read_class_list(out / "train.beton.json") == train["classes"]
    (tmp_path / "classes.txt").write_text("n02\nn01\n\n")
    assert read_class_list(tmp_path / "classes.txt") == ["n02", "n01"]
    (tmp_path / "list.json").write_text('["b", "a"]')
    assert read_class_list(tmp_path / "list.json") == ["b", "a"]
    (tmp_path / "dup.txt").write_text("a\na\n")
    with pytest.raises(UserError, match="twice"):
        read_class_list(tmp_path / "dup.txt")
    with pytest.raises(UserError, match="not found"):
        read_class_list(tmp_path / "none.beton")
