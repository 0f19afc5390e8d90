"""Decoding source images for the writer, from their bytes (a file's, or an archive member's),
and untrusted images for predictions (``open_rgb``).

Every candidate is decoded before it is packed, whatever its name says, so a truncated or foreign
file is skipped with a reason instead of crashing a writer process. Colour handling: grayscale,
CMYK, YCbCr, 1-bit and palette images become RGB; images with transparency (RGBA, LA, palette +
transparency) are composited on white, the background most photographs and product shots
assume; 16- and 32-bit images are scaled down to 8 bits. EXIF orientation is not applied, like
torchvision's ``ImageFolder``, so the pixels match what published ImageNet numbers used. Only
the first frame of an animated or multi-page file is read (nothing seeks past it).

Every image is untrusted: a few hundred kB of PNG can claim gigapixels. Its size is checked from
the header, after PIL's lazy ``Image.open`` and before any pixel is decoded, against a pixel
budget (``MAX_PIXELS``, which is also PIL's own ``Image.MAX_IMAGE_PIXELS``) and a bound on the
memory decoding it takes (``MAX_DECODED_BYTES``); an image over either is refused, never
decoded. EPS files are refused too: PIL would run Ghostscript, a PostScript interpreter, on them.
"""
from __future__ import annotations

import io
import os
import re
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..base.files import NotRegular, open_regular

# The pixel budget: 100 Mpx, several times the largest photos in ImageNet (tens of Mpx at most),
# 10000 x 10000. Set as PIL's own limit too, so PIL's check in Image.open (an error here, not a
# warning) and ours agree, as does any other PIL use in the process. Ours is the one that holds
# when PIL's warning is not an error (warning filters are per process, not per thread).
MAX_PIXELS = 100_000_000
# The decoded bytes one image may take: its pixels as PIL holds them (``_stored_bytes``: the bit
# depth and bands) plus the 8-bit RGB result (PIL's 4 bytes a pixel and numpy's 3). Every mode
# fits at the 100 Mpx default (at most 11 bytes a pixel, 1.1 GB; measured peaks of a whole decode
# there: 0.95 GiB for RGB PNGs, 1.05 for grayscale, 1.15 for 16-bit grayscale, 1.3 for RGBA), so
# this only binds when the budget is raised: each writer process still stays within a few GiB.
MAX_DECODED_BYTES = 2 << 30
REFUSED_FORMATS = ("EPS",)  # decoded by running Ghostscript on the file: a program, not pixels
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class ImageRefused(ValueError):
    """An image that is not decoded: not an image, unreadable, or over the budget. The message is
    one line that says which."""


def set_max_pixels(pixels: int) -> None:
    """Make ``pixels`` this process's pixel budget (and PIL's), e.g. from a writer option; the
    writer's check and writer processes are forked and inherit it."""
    if pixels < 1:
        raise ValueError(f"the pixel budget must be positive, not {pixels}")
    Image.MAX_IMAGE_PIXELS = int(pixels)


def _stored_bytes(mode: str) -> int:
    """Bytes PIL holds per pixel of ``mode``: 1 for 1/L/P, 2 for 16-bit, 4 for 32-bit and every
    multi-band mode (RGB included)."""
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4


def check_budget(width: int, height: int, mode: str) -> None:
    """Refuse (``ImageRefused``) an image whose header declares more than the budget."""
    if width * height > (Image.MAX_IMAGE_PIXELS or MAX_PIXELS):
        raise _too_many(width * height, f" ({width}x{height})")
    need = width * height * (_stored_bytes(mode) + 7)
    if need > MAX_DECODED_BYTES:
        raise ImageRefused(f"too large to decode: {width}x{height} {mode} needs "
                           f"{need / 2 ** 30:.1f} GiB, over {MAX_DECODED_BYTES / 2 ** 30:g} GiB")


def _too_many(pixels: int, size: str = "") -> ImageRefused:
    limit = Image.MAX_IMAGE_PIXELS or MAX_PIXELS
    return ImageRefused(f"too many pixels: {pixels / 1e6:.1f} Mpx{size}, over the budget of "
                        f"{limit / 1e6:g} Mpx; not decoded")


def _bomb(e: Exception) -> ImageRefused:
    """PIL's own refusal (its check in Image.open, on the same limit) as ours."""
    found = re.search(r"\((\d+) pixels\)", str(e))
    return _too_many(int(found[1])) if found else ImageRefused(f"too many pixels: {e}")


def _decoded(fp, use):
    """``use(image)`` on the first frame of ``fp`` opened by PIL once its header is within the
    budget; every failure becomes ``ImageRefused`` with a one-line reason."""
    Image.init()
    formats = [f for f in Image.OPEN if f not in REFUSED_FORMATS]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # EXIF, TIFF tags, palettes: harmless
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp, formats=formats) as im:
                check_budget(*im.size, im.mode)
                return use(im)
    except ImageRefused:
        raise
    except UnidentifiedImageError:
        raise ImageRefused("not an image (or an unsupported format)") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise _bomb(e) from None
    except Exception as e:  # truncated, corrupt, unreadable, out of memory
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageRefused(f"unreadable image: {msg[:200]}") from None


def _regular_file(path) -> io.BufferedReader:
    """``path`` opened for reading if it is a regular file (a FIFO would block, a device never
    end): opened without blocking, then checked."""
    try:
        f = open_regular(path)
    except NotRegular as e:
        raise ImageRefused(str(e)) from None
    except (OSError, ValueError) as e:
        raise ImageRefused(f"cannot open: {getattr(e, 'strerror', None) or e}") from None
    if os.fstat(f.fileno()).st_size == 0:
        f.close()
        raise ImageRefused("empty file (0 bytes)")
    return f


def _pixels(im: Image.Image) -> np.ndarray:
    return np.asarray(to_rgb(im), dtype=np.uint8)


def open_rgb(source: str | os.PathLike | bytes) -> np.ndarray:
    """HxWx3 uint8 RGB pixels of an untrusted image, a path or its bytes (the first frame,
    converted as the writer stores it); raises ``ImageRefused`` with a one-line reason for
    anything else, an image over the budget never decoded."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageRefused("empty file (0 bytes)")
        return _decoded(io.BytesIO(source), _pixels)
    with _regular_file(source) as f:
        return _decoded(f, _pixels)


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB (alpha composited on white, high bit depths scaled down)."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    elif mode in ("L", "1") and "transparency" in im.info:
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im if mode == "RGBA" else im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        return background.convert("RGB")
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_to_8bit(np.asarray(im), mode), mode="L").convert("RGB")
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def _to_8bit(a: np.ndarray, mode: str) -> np.ndarray:
    """A 16- or 32-bit (or float) single-channel image as 8 bits, using no more than one 4-byte
    copy of it (this runs on images up to the pixel budget)."""
    if a.ndim == 3:
        a = a[..., 0]
    if mode.startswith("I;16"):  # round(a * 255 / 65535) = round(a / 257), exact in integers
        return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)
    # 'I' (32-bit int, often a 16-bit PNG) or 'F': infer the range from the data
    top = float(a.max()) if a.size else 0.0
    scale = 255.0 if top <= 255 else 65535.0 if top <= 65535 else top
    if mode == "F" and 0 < top <= 1.0:
        scale = 1.0
    out = a.astype(np.float32)
    out *= np.float32(255.0 / scale)
    np.rint(out, out=out)
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


def resized(w: int, h: int, max_resolution: int) -> tuple[int, int]:
    """The size ffcv's ``RGBImageField`` stores (its ``resizer``: longest side capped)."""
    ratio = max_resolution / max(w, h)
    if ratio >= 1:
        return w, h
    return int(ratio * w), int(ratio * h)


_RGB_IDS = b"RGB"  # component ids of a JPEG holding RGB rather than YCbCr


def _jpeg_frame(data: bytes) -> tuple[int, bytes, bool] | None:
    """``(SOF marker, frame header, refuse)`` of a JPEG, from its marker segments; ``refuse``: an
    Adobe marker (colour transform) or an MPO index (more images follow the first) was seen."""
    i, refuse = 2, False
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if (marker == 0xEE and data[i + 4:i + 9] == b"Adobe"
                or marker == 0xE2 and data[i + 4:i + 8] == b"MPF\0"):
            refuse = True
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return marker, data[i + 4:i + 2 + length], refuse
        elif marker == 0xDA:
            return None
        i += 2 + length
    return None


def stores_as_is(data: bytes, w: int, h: int, max_resolution: int) -> bool:
    """Can the file itself be stored as the sample's JPEG: an 8-bit baseline or progressive
    Huffman JPEG in YCbCr or grayscale (no Adobe marker: CMYK, YCCK and RGB JPEGs are
    re-encoded; no MPO), needing no resize, and no bigger than its raw pixels (no bloated
    metadata)."""
    if data[:2] != b"\xff\xd8" or max(w, h) > max_resolution or len(data) > 3 * w * h:
        return False
    frame = _jpeg_frame(data)
    if frame is None:
        return False
    marker, sof, refuse = frame
    if marker not in (0xC0, 0xC2) or refuse or len(sof) < 6 or sof[0] != 8:
        return False
    components = sof[5]
    ids = bytes(sof[6 + 3 * k] for k in range(components) if 6 + 3 * k < len(sof))
    return components == 1 or (components == 3 and ids != _RGB_IDS)


def probe(data: bytes, max_resolution: int = 500):
    """``(None, width, height, as_is)`` when ``data`` is an image the writer can store, else
    ``(reason, 0, 0, False)``; ``as_is``: see ``stores_as_is``. Decodes the whole file (JPEGs at
    1/8 scale, which still reads every byte of the compressed stream, so truncation is caught)
    and converts it to RGB, unless its header is over the budget (``check_budget``)."""
    if len(data) == 0:
        return "empty file (0 bytes)", 0, 0, False
    try:
        w, h = _decoded(io.BytesIO(data), _decode_small)
    except ImageRefused as e:
        return str(e), 0, 0, False
    if w < 1 or h < 1 or min(resized(w, h, max_resolution)) < 1:
        return f"degenerate size {w}x{h}", 0, 0, False
    return None, w, h, stores_as_is(data, w, h, max_resolution)


def _decode_small(im: Image.Image) -> tuple[int, int]:
    """The image's size, after decoding all of it (JPEGs by DCT scaling: every byte is still
    decoded) and converting it to RGB."""
    w, h = im.size
    if im.format in ("JPEG", "MPO"):
        im.draft(None, (1, 1))
    im.load()
    to_rgb(im).getpixel((0, 0))
    return w, h
