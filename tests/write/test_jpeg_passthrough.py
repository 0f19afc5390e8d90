"""JPEG passthrough: a source JPEG that needs no resize and is stored as JPEG goes into the beton
as its own bytes (no second lossy encode); CMYK/Adobe, resized and non-JPEG images are encoded by
ffcv as before; both the fast and the stock decoder read the stored bytes; --cfg.reencode 1
re-encodes everything; 'proportion' mode's JPEG/raw choice is unchanged."""
from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ffcv_utils.write.writer import write_split

W, H = 56, 40  # under max_resolution=64: no resize

# name: (PIL mode, save options, stored as its own bytes?)
KINDS = {
    "a_baseline.jpg": ("RGB", {"quality": 90}, True),
    "b_progressive.jpg": ("RGB", {"quality": 85, "progressive": True}, True),
    "c_gray.jpg": ("L", {"quality": 90}, True),
    "d_gray_progressive.jpg": ("L", {"quality": 90, "progressive": True}, True),
    "e_cmyk.jpg": ("CMYK", {"quality": 90}, False),  # Adobe marker: must be re-encoded
    "f_big.jpg": ("RGB", {"quality": 90}, False),  # 100 px wide: resized, so re-encoded
    "g_png.png": ("RGB", {}, False),
}


def _photo(seed: int, w: int = W, h: int = H) -> Image.Image:
    y, x = np.mgrid[0:h, 0:w]
    a, b, c = np.random.default_rng(seed).uniform(0.5, 3, 3)
    return Image.fromarray((np.stack([x * a, y * b, (x + y) * c], -1) % 256).astype(np.uint8))


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    root = tmp_path_factory.mktemp("passthrough") / "train"
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i, (name, (mode, opts, _)) in enumerate(KINDS.items()):
            im = _photo(i + 10 * (cls == "dog"), *((100, 80) if "big" in name else (W, H)))
            im.convert(mode).save(root / cls / name, **opts)
    return root


def _stored(beton: Path, index: int, nbytes: int) -> tuple[int, bytes]:
    from ffcv.reader import Reader

    meta = Reader(str(beton)).metadata["f0"][index]
    return int(meta["mode"]), np.fromfile(beton, np.uint8, count=nbytes,
                                          offset=int(meta["data_ptr"])).tobytes()


def _files(root: Path) -> list[Path]:
    return [root / cls / name for cls in ("cat", "dog") for name in KINDS]


def test_eligible_jpegs_are_stored_as_their_own_bytes(jpegs, tmp_path):
    beton = tmp_path / "train.beton"
    s = write_split(jpegs, "train", beton, shuffle=False, max_resolution=64, write_mode="jpg",
                    num_workers=2, progress=False)
    assert s["images"] == 14 and s["jpeg_as_is"] == 8
    for i, f in enumerate(_files(jpegs)):
        mode, stored = _stored(beton, i, f.stat().st_size)
        assert mode == 0  # JPEG
        assert (stored == f.read_bytes()) == KINDS[f.name][2], f.name

    again = write_split(jpegs, "train", tmp_path / "re.beton", shuffle=False,
                        max_resolution=64, write_mode="jpg", reencode=True, num_workers=1,
                        progress=False)
    assert again["jpeg_as_is"] == 0 and again["settings"]["reencode"] is True
    for i, f in enumerate(_files(jpegs)):
        assert _stored(tmp_path / "re.beton", i, f.stat().st_size)[1] != f.read_bytes()


def test_both_decoders_read_passed_through_jpegs_including_progressive_and_gray(jpegs,
                                                                                tmp_path):
    from ffcv.libffcv import imdecode

    from ffcv_utils.load import decode as fast_decode

    beton = tmp_path / "train.beton"
    write_split(jpegs, "train", beton, shuffle=False, max_resolution=64, write_mode="jpg",
                num_workers=1, progress=False)
    for i, f in enumerate(_files(jpegs)):
        if not KINDS[f.name][2]:
            continue
        data = np.frombuffer(f.read_bytes(), np.uint8)
        _, stored = _stored(beton, i, data.size)
        assert stored == data.tobytes()
        expected = np.asarray(Image.open(f).convert("RGB")).astype(int)
        stock = np.zeros((H, W, 3), np.uint8)
        imdecode(data, stock, H, W, H, W, 0, 0, 1, 1, False, False)
        fast, status = fast_decode.decode_crop_resize(data, H, W, (0, 0, H, W), (H, W))
        assert status == 0
        for name, got in (("stock", stock), ("fast", fast)):
            assert np.abs(got.astype(int) - expected).mean() < 1.5, (f.name, name)


def test_the_loaders_of_both_decoders_read_a_passthrough_beton(jpegs, tmp_path):
    from ffcv_utils.load.loaders import val_loader

    beton = tmp_path / "train.beton"
    write_split(jpegs, "train", beton, shuffle=False, max_resolution=64, write_mode="jpg",
                num_workers=1, progress=False)
    means = {}
    for decoder in ("fast", "ffcv"):
        loader = val_loader(str(beton), batch_size=14, num_workers=1, res=32, decoder=decoder)
        [(images, labels)] = list(loader)
        assert labels.tolist() == [0] * 7 + [1] * 7
        means[decoder] = images.float().mean(dim=(2, 3))
        del loader, images, labels
        gc.collect()
        gray = [i for i, f in enumerate(_files(jpegs)) if "gray" in f.name]
        assert (means[decoder][gray].std(dim=1) == 0).all()  # grey JPEGs come out as RGB
    # the same pictures (means per channel, 0-255), up to the two decoders' resize methods
    assert (means["fast"] - means["ffcv"]).abs().max() < 4


def test_proportion_mode_keeps_its_jpeg_or_raw_choice(jpegs, tmp_path):
    from ffcv.reader import Reader

    modes = []
    for reencode in (False, True):
        beton = tmp_path / f"p{int(reencode)}.beton"
        write_split(jpegs, "train", beton, shuffle=False, max_resolution=64,
                    reencode=reencode, num_workers=1, progress=False)
        modes.append(Reader(str(beton)).metadata["f0"]["mode"].tolist())
    assert modes[0] == modes[1] and 0 < sum(modes[0]) < len(modes[0])
