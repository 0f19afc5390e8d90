"""Hostile source images (issue 24): decompression bombs, files PIL would hand to a program, and
paths that are not files. A bomb is a real PNG of a few hundred kB declaring 144 Mpx (PIL's own
limit only warned there, and the writer silenced the warning and decoded it); it is refused from
its header, never decoded, by ``images.open_rgb`` and by the writer, which skips and reports it
and writes the good images, in a process whose address space could not hold the decoded bomb.
"""
from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ffcv_utils.beton import sidecar as dataset_info

from ffcv_utils.write import images
from ffcv_utils.write.images import ImageRefused, open_rgb

ROOT = Path(__file__).resolve().parents[2]
BOMB_SIDE = 12000  # 144 Mpx: over the 100 Mpx budget, under twice PIL's old 89.5 Mpx limit
# The writer's address space past its imports: enough for it to write small images, not for an
# 8-bit 144 Mpx image decoded (144 MB) and converted to RGB (576 MB more), as it was before.
HEADROOM = 512 << 20


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def zero_png(width: int, height: int, bit_depth: int = 8) -> bytes:
    """A grayscale PNG of ``width x height`` black pixels, its zlib stream made without ever
    holding the raw image: every row of a black image is zero bytes (filter 0, pixels 0), so the
    stream is one compressed MiB of zeros repeated (each ends on a full flush, which makes the
    blocks independent), the rest, and the Adler-32 of n zero bytes: (n mod 65521) << 16 | 1."""
    n = height * (1 + (width * bit_depth + 7) // 8)
    block = 1 << 20

    def deflate(size: int, mode: int) -> bytes:
        z = zlib.compressobj(9, zlib.DEFLATED, -15)
        return z.compress(bytes(size)) + z.flush(mode)

    full, rest = divmod(n, block)
    stream = (b"\x78\xda" + deflate(block, zlib.Z_FULL_FLUSH) * full
              + deflate(rest, zlib.Z_FINISH) + struct.pack(">I", (n % 65521) << 16 | 1))
    header = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", stream)
            + _chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    return {"bomb8.png": zero_png(BOMB_SIDE, BOMB_SIDE, 8),
            "bomb16.png": zero_png(BOMB_SIDE, BOMB_SIDE, 16)}


@pytest.fixture
def budget():
    """``set(pixels)``: this process's pixel budget for one test, restored after it."""
    before = Image.MAX_IMAGE_PIXELS
    yield images.set_max_pixels
    Image.MAX_IMAGE_PIXELS = before


def png_bytes(im: Image.Image, fmt: str = "PNG", **save) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **save)
    return buf.getvalue()


@pytest.mark.parametrize("bit_depth", [1, 8, 16])
def test_the_bomb_builder_makes_real_pngs(bit_depth):
    """The same builder at a size PIL may decode: a valid PNG of the declared black pixels
    (more than one MiB of stream, so the repeated blocks are exercised)."""
    data = zero_png(9000, 1000, bit_depth)
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        assert im.size == (9000, 1000)
        assert np.asarray(im).max() == 0
    raw = zlib.decompress(data[data.index(b"IDAT") + 4:-12 - 4])  # checks the Adler-32 too
    assert raw == bytes(1000 * (1 + (9000 * bit_depth + 7) // 8)) and len(raw) > 1 << 20


@pytest.mark.timeout(60)
def test_open_rgb_refuses_bombs_from_their_header(bombs, tmp_path):
    for name, data in bombs.items():
        assert len(data) < 400_000
        (tmp_path / name).write_bytes(data)
        for source in (data, tmp_path / name, str(tmp_path / name)):
            with pytest.raises(ImageRefused, match=r"^too many pixels: 144\.0 Mpx, over the "
                               r"budget of 100 Mpx; not decoded$"):
                open_rgb(source)


def test_budget_boundary_on_real_files(budget):
    """An image at the budget is decoded, one pixel row more is refused: pixels, and decoded
    bytes that count the mode's bytes per pixel (a grayscale image fits where RGB does not)."""
    rgb = Image.fromarray(np.full((48, 64, 3), 200, np.uint8))
    budget(64 * 48)
    assert open_rgb(png_bytes(rgb)).shape == (48, 64, 3)
    for size in ((64, 49), (65, 48)):
        with pytest.raises(ImageRefused, match="over the budget of 0.003072 Mpx"):
            open_rgb(png_bytes(rgb.resize(size)))
    budget(10 ** 6)
    at = 64 * 48 * (4 + 7)  # RGB: 4 bytes a pixel as PIL holds it, 7 for the RGB result
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(images, "MAX_DECODED_BYTES", at)
        assert open_rgb(png_bytes(rgb)).shape == (48, 64, 3)
        with pytest.raises(ImageRefused, match=r"^too large to decode: 64x49 RGB"):
            open_rgb(png_bytes(rgb.resize((64, 49))))
        gray = open_rgb(png_bytes(rgb.resize((64, 49)).convert("L")))  # 1 + 7 bytes a pixel
        assert gray.shape == (49, 64, 3) and (gray == 200).all()


def test_default_budget_boundary_from_real_headers():
    """At the default budget (checked on the header PIL reads lazily: nothing decoded),
    10000 x 10000 passes and 10000 x 10001 does not, for 1-bit and 16-bit files alike."""
    for bit_depth in (1, 16):
        with Image.open(io.BytesIO(zero_png(10000, 10000, bit_depth))) as im:
            images.check_budget(*im.size, im.mode)
        with pytest.warns(Image.DecompressionBombWarning):  # PIL's limit is the same
            im = Image.open(io.BytesIO(zero_png(10000, 10001, bit_depth)))
        with im, pytest.raises(ImageRefused, match=r"100\.0 Mpx \(10000x10001\), over the "
                               "budget of 100 Mpx"):
            images.check_budget(*im.size, im.mode)


def test_eps_is_refused_and_ghostscript_never_runs(monkeypatch):
    """PIL decodes EPS by running Ghostscript on the file (a PostScript program)."""
    from PIL import EpsImagePlugin

    ran = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: ran.append(a))
    eps = png_bytes(Image.new("RGB", (8, 8), (1, 2, 3)), "EPS")
    with pytest.raises(ImageRefused, match="^not an image"):
        open_rgb(eps)
    assert images.probe(eps)[0].startswith("not an image")
    assert ran == []


@pytest.mark.timeout(20)
def test_paths_that_are_not_regular_files_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / "a.png"
    os.mkfifo(fifo)  # no writer: reading it would block forever
    (tmp_path / "empty.png").write_bytes(b"")
    for path, why in ((fifo, "not a regular file"), ("/dev/zero", "not a regular file"),
                      (tmp_path, "not a regular file"), (tmp_path / "empty.png", "empty file"),
                      (tmp_path / "missing.png", "cannot open")):
        with pytest.raises(ImageRefused, match=f"^{why}"):
            open_rgb(path)


def test_only_the_first_frame_is_decoded():
    frames = [Image.new("RGB", (16, 8), c) for c in ((250, 0, 0), (0, 0, 250))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        assert im.n_frames == 2
    pixels = open_rgb(buf.getvalue())
    assert pixels.shape == (8, 16, 3) and (pixels[..., 0] > 200).all()


# write_ffcv.py after its heavy imports (torch maps gigabytes of libraries), its address space
# then limited to what it has plus HEADROOM; the processes it forks inherit the limit.
LIMITED_WRITER = f"""
import resource, runpy, sys
import ffcv.fields, ffcv.writer, ffcv.reader
import ffcv_utils.write.cli, ffcv_utils.write.writer
used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (used + {HEADROOM}, resource.RLIM_INFINITY))
sys.argv[0] = {str(ROOT / "write_ffcv.py")!r}
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow  # a write_ffcv.py process: about 8 s of CPU
@pytest.mark.timeout(240)
def test_writer_skips_and_reports_bombs_and_writes_the_good_images(bombs, photos_dir, tmp_path):
    """write_ffcv.py on a folder with both bombs and an EPS among real photos, with its address
    space limited (every process it forks inherits the limit)."""
    data = tmp_path / "data" / "train"
    good = 0
    for cls, extra in (("a", ["bomb8.png"]), ("b", ["bomb16.png"])):
        (data / cls).mkdir(parents=True)
        for photo in sorted((photos_dir / "train").glob("*/*.JPEG"))[good:good + 3]:
            shutil.copy(photo, data / cls / photo.name)
        good += 3
        for name in extra:
            (data / cls / name).write_bytes(bombs[name])
    (data / "b" / "figure.eps").write_bytes(png_bytes(Image.new("RGB", (8, 8)), "EPS"))
    out = tmp_path / "train.beton"
    done = subprocess.run(
        [sys.executable, "-c", LIMITED_WRITER, "--split", "train", "--cfg.data_dir",
         str(tmp_path / "data"), "--cfg.write_path", str(out), "--cfg.max_resolution", "64",
         "--cfg.num_workers", "2"],
        capture_output=True, text=True, timeout=200, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    info = dataset_info.read_info(out)
    skipped = {Path(item["file"]).name: item["reason"] for item in info["skipped"]}
    assert set(skipped) == {"bomb8.png", "bomb16.png", "figure.eps"}
    for name in ("bomb8.png", "bomb16.png"):
        assert skipped[name] == "too many pixels: 144.0 Mpx, over the budget of 100 Mpx; " \
                                "not decoded"
    assert skipped["figure.eps"].startswith("not an image")
    assert info["num_samples"] == good == 6
    assert "bomb" in done.stdout + done.stderr  # the skip report names them
