"""Decoding source images for the writer, from their bytes (a file's, or an archive member's).

Every candidate is decoded before it is packed, whatever its name says, so a truncated or foreign
file is skipped with a reason instead of crashing a writer process. Colour handling: grayscale,
CMYK, YCbCr, 1-bit and palette images become RGB; images with transparency (RGBA, LA, palette +
transparency) are composited on white, the background most photographs and product shots
assume; 16- and 32-bit images are scaled down to 8 bits. EXIF orientation is not applied, like
torchvision's ``ImageFolder``, so the pixels match what published ImageNet numbers used.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError


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
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        return background.convert("RGB")
    if mode.startswith("I") or mode == "F":
        a = np.asarray(im)
        if a.ndim == 3:
            a = a[..., 0]
        a = a.astype(np.float64)
        if mode.startswith("I;16"):
            scale = 65535.0
        else:  # 'I' (32-bit int, often a 16-bit PNG) or 'F': infer the range from the data
            top = float(a.max()) if a.size else 0.0
            scale = 255.0 if top <= 255 else 65535.0 if top <= 65535 else top
            if mode == "F" and 0 < top <= 1.0:
                scale = 1.0
        gray = np.clip(np.rint(a * (255.0 / scale)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def load_rgb(data: bytes) -> np.ndarray:
    """HxWx3 uint8 array of the encoded image ``data``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DecompressionBombWarning, EXIF warnings
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(to_rgb(im), dtype=np.uint8)


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
    and converts it to RGB."""
    reason, w, h = _decode_check(data, max_resolution)
    if reason is not None:
        return reason, 0, 0, False
    return None, w, h, stores_as_is(data, w, h, max_resolution)


def _decode_check(data: bytes, max_resolution: int):
    if len(data) == 0:
        return "empty file (0 bytes)", 0, 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if im.format in ("JPEG", "MPO"):
                    im.draft(None, (1, 1))  # DCT scaling: every byte is still decoded
                im.load()
                to_rgb(im).getpixel((0, 0))
    except UnidentifiedImageError:
        return "not an image (or an unsupported format)", 0, 0
    except Image.DecompressionBombError as e:
        return f"too many pixels: {e}", 0, 0
    except Exception as e:  # truncated, corrupt, unreadable
        msg = str(e) or type(e).__name__
        return f"unreadable image: {msg[:200]}", 0, 0
    if w < 1 or h < 1 or min(resized(w, h, max_resolution)) < 1:
        return f"degenerate size {w}x{h}", 0, 0
    return None, w, h
