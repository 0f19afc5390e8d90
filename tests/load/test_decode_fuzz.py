"""Hostile samples against the fast decoder (issue 18): every beton is untrusted input.

A few thousand calls with mutated real JPEGs, raw samples whose metadata lies about their size
and random or out-of-range crops: each call returns a status (0 ok, 1 damaged, 2 refused or
undecodable, all grey), every non-zero status is counted, and nothing crashes. The same calls
under AddressSanitizer read nothing out of bounds (docs/reliability.md, "What the fast decoder
guarantees").
Then the specific hostile samples the ASan fuzzing found, one test each.
"""
from __future__ import annotations

import io
import resource

import numpy as np
import pytest

from ffcv_utils.load import decode as fast_decode

pytestmark = pytest.mark.skipif(not fast_decode.available(),
                                reason="fast decoder C extension not built (make install)")

SLOT = 7
MAX_PIXELS = 8192 * 8192  # FJ_MAX_PIXELS in csrc/fastjpeg.c
KEEP_BYTES = 16 << 20     # FJ_KEEP_BYTES
CALLS, SEED = 3000, 18     # about a second; the ASan run (see the report) used more
WILD = (0, -1, 1, -(2 ** 31), 2 ** 31 - 1, 2 ** 31 - 2, 65500, 65535)


def jpeg_bytes(rgb: np.ndarray, **save) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", **save)
    return np.frombuffer(buf.getvalue(), np.uint8).copy()


@pytest.fixture(scope="module")
def samples():
    """(rgb, JPEG bytes) of real photos: baseline 4:2:0, progressive 4:4:4, greyscale, odd size."""
    from PIL import Image

    from ffcv_utils.tools.sample_data import _source_photos

    src = _source_photos()
    small = [np.asarray(Image.fromarray(s).resize(size, Image.BILINEAR))
             for s, size in zip(src + src, [(120, 90), (96, 128), (61, 37), (200, 150)])]
    out = [(small[0], jpeg_bytes(small[0], quality=90)),
           (small[1], jpeg_bytes(small[1], quality=80, subsampling=0, progressive=True)),
           (small[2], jpeg_bytes(small[2], quality=95, progressive=True)),
           (small[3], jpeg_bytes(np.asarray(Image.fromarray(small[3]).convert("L"))))]
    return [(np.ascontiguousarray(rgb), data) for rgb, data in out]


def sof_offset(data: np.ndarray) -> int | None:
    """Offset of the start-of-frame segment (walking the markers before the first scan)."""
    b, i = data.tobytes(), 2
    while i + 4 <= len(b) and b[i] == 0xFF:
        marker, length = b[i + 1], int.from_bytes(b[i + 2:i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):
            return i
        if marker == 0xDA:
            return None
        i += 2 + length
    return None


def with_frame(data: np.ndarray, height: int, width: int) -> np.ndarray:
    """The JPEG with its frame header claiming height x width (the scan data unchanged)."""
    out, i = data.copy(), sof_offset(data)
    out[i + 5:i + 7] = np.frombuffer(int(height).to_bytes(2, "big"), np.uint8)
    out[i + 7:i + 9] = np.frombuffer(int(width).to_bytes(2, "big"), np.uint8)
    return out


def mutate(data: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, tuple | None]:
    """A damaged copy, and the frame (h, w) it claims when only its frame header was changed."""
    kind = int(rng.integers(6))
    n = data.size
    if kind == 0:                                   # bytes overwritten
        out = data.copy()
        at = rng.integers(0, n, int(rng.integers(1, 12)))
        out[at] = rng.integers(0, 256, at.size)
        return out, None
    if kind == 1:                                   # truncated
        return data[:int(rng.integers(0, n))].copy(), None
    if kind == 2:                                   # frame header lies
        frame = tuple(int(rng.choice([1, 17, 255, 3000, 65500, rng.integers(1, 3000)]))
                      for _ in range(2))
        return with_frame(data, *frame), frame
    at = int(rng.integers(0, n))
    if kind == 3:                                   # junk inserted
        return np.concatenate([data[:at], rng.integers(0, 256, 64).astype(np.uint8),
                               data[at:]]), None
    if kind == 4:                                   # a slice repeated (markers, scans)
        piece = data[at:at + int(rng.integers(1, 400))]
        return np.concatenate([data[:at], piece, piece, data[at:]]), None
    out = data.copy()                               # a run of 0xFF or 0x00
    out[at:at + int(rng.integers(1, 300))] = 0xFF if rng.random() < 0.5 else 0
    return out, None


def metadata(rng, h: int, w: int, frame: tuple | None) -> tuple[int, int]:
    r = rng.random()
    if r < 0.5:
        return h, w
    if r < 0.7 and frame is not None:
        return frame                                # a hostile beton agreeing with its stream
    return tuple(int(rng.choice([*WILD, 2 * h, h // 2, rng.integers(1, 4000)])) for _ in range(2))


def crop(rng, h: int, w: int) -> tuple[int, int, int, int]:
    """Half the time a crop inside the image (as the crop generators draw), else wild values."""
    if rng.random() < 0.5 and 0 < h < 10 ** 5 and 0 < w < 10 ** 5:
        y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
        return y, x, int(rng.integers(1, h - y + 1)), int(rng.integers(1, w - x + 1))
    return tuple(int(rng.choice([*WILD, rng.integers(-5000, 5000)])) for _ in range(4))


def call(rng, kind, data, h, w):
    out = tuple(int(v) for v in rng.integers(1, 65, 2))
    box, flip = crop(rng, h, w), bool(rng.random() < 0.5)
    if kind == "jpeg":
        return fast_decode.decode_crop_resize(data, h, w, box, out, flip=flip, slot=SLOT)
    return fast_decode.crop_resize(data, h, w, box, out, flip=flip, slot=SLOT)


def test_fuzz_mutated_jpegs_and_lying_raw_samples(samples):
    """CALLS calls; the statuses must be exact where the hostility is known."""
    lib = fast_decode.library()
    lib.fj_take_failures(SLOT)
    rng = np.random.default_rng(SEED)
    statuses = []
    for k in range(CALLS):
        rgb, jpeg = samples[k % len(samples)]
        if k % 3 == 2:                              # raw: the stored bytes, maybe cut short
            data = rgb.reshape(-1)[:int(rng.integers(0, rgb.size + 1))] \
                if rng.random() < 0.3 else rgb.reshape(-1)
            h, w = metadata(rng, *rgb.shape[:2], None)
            got, status = call(rng, "raw", data, h, w)
            bad = h <= 0 or w <= 0 or h * w * 3 > data.size
            assert status == (2 if bad else 0), (h, w, data.size)
        else:
            data, frame = mutate(jpeg, rng) if rng.random() < 0.8 else (jpeg, rgb.shape[:2])
            h, w = metadata(rng, *rgb.shape[:2], frame)
            got, status = call(rng, "jpeg", data, h, w)
            assert status in (0, 1, 2)
            if h <= 0 or w <= 0 or (frame is not None and (
                    frame[0] > h or frame[1] > w or frame[0] * frame[1] > MAX_PIXELS)):
                assert status == 2, (h, w, frame)
        if status == 2:
            assert (got == 128).all()
        statuses.append(status)
    statuses = np.array(statuses)
    assert lib.fj_take_failures(SLOT) == (statuses != 0).sum()
    assert (statuses == 0).mean() > 0.25 and (statuses == 2).mean() > 0.1  # both kinds exercised


# -- the hostile samples the ASan fuzzing found -----------------------------------------------------

def test_raw_sample_claiming_more_than_it_holds_is_refused(samples):
    rgb = samples[0][0]
    h, w = rgb.shape[:2]
    lib = fast_decode.library()
    lib.fj_take_failures(SLOT)
    for data, mh, mw in ((rgb.reshape(-1)[:-1], h, w), (rgb, h + 1, w), (rgb, 0, w),
                         (rgb, h, -w), (rgb, 2 ** 31 - 1, 2 ** 31 - 1)):
        got, status = fast_decode.crop_resize(data, mh, mw, (0, 0, h, w), (32, 32), slot=SLOT)
        assert status == 2 and (got == 128).all()
    assert lib.fj_take_failures(SLOT) == 5
    got, status = fast_decode.crop_resize(rgb, h, w, (0, 0, h, w), (32, 32), slot=SLOT)
    assert status == 0 and got.std() > 5
    assert lib.fj_take_failures(SLOT) == 0


@pytest.mark.parametrize("save", [{}, {"progressive": True, "subsampling": 0}])
def test_huge_frame_is_refused_before_libjpeg_allocates(samples, save):
    """A few hundred bytes declaring 65500 x 65500 (metadata agreeing): refused, no memory
    touched (before the fix: ~13-26 GB for a progressive one, 1-1.5 s and ~200 MB baseline)."""
    tiny = jpeg_bytes(samples[0][0][:16, :16], **save)
    assert tiny.size < 1000
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for h, w in ((65500, 65500), (8192, 8193)):
        got, status = fast_decode.decode_crop_resize(with_frame(tiny, h, w), h, w,
                                                     (0, 0, h, w), (64, 64))
        assert status == 2 and (got == 128).all()
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
    assert grown_mib < 64, grown_mib
    # at the cap it is decoded, as far as the data goes (the top rows, then damaged): libjpeg's
    # memory limit leaves room for the cap's worst case, 4:4:4 progressive (384 MiB)
    got, status = fast_decode.decode_crop_resize(with_frame(tiny, 8192, 8192), 8192, 8192,
                                                 (0, 0, 16, 16), (16, 16))
    assert status == 1


def test_frame_larger_than_metadata_is_refused_smaller_is_scaled(samples):
    rgb, jpeg = samples[0]
    h, w = rgb.shape[:2]
    for mh, mw in ((h - 1, w), (h, w - 1), (h // 2, w // 2)):
        got, status = fast_decode.decode_crop_resize(jpeg, mh, mw, (0, 0, mh, mw), (32, 32))
        assert status == 2 and (got == 128).all()
    # metadata twice the frame: the crop is scaled into the stream's frame, as before
    ref, _ = fast_decode.decode_crop_resize(jpeg, h, w, (0, 0, h, w), (32, 32))
    got, status = fast_decode.decode_crop_resize(jpeg, 2 * h, 2 * w, (0, 0, 2 * h, 2 * w), (32, 32))
    assert status == 0 and np.array_equal(got, ref)


def test_out_of_range_crops_are_clamped_into_the_image(samples):
    """A centre crop with crop_ratio > 1 (negative origin) resized up, and values near 2^31:
    the same output as the crop clamped to the image, for JPEG and raw samples alike."""
    rgb, jpeg = samples[0]
    h, w = rgb.shape[:2]
    c = int(1.3 * min(h, w))                        # ffcv's get_center_crop(h, w, None, 1.3)
    y, x, ch, cw = (h - c) // 2, (w - c) // 2, c, c
    assert y < 0 and ch > h
    cases = [((y, x, ch, cw), (0, x, h, cw)), ((-5, -7, 2 ** 31 - 1, 2 ** 31 - 1), (0, 0, h, w)),
             ((2 ** 31 - 1, 2 ** 31 - 1, 9, 9), (h - 1, w - 1, 1, 1)),
             ((10, 20, -3, 0), (10, 20, 1, 1))]
    for box, clamped in cases:
        for out in ((200, 200), (16, 24)):          # enlarging and shrinking
            got, status = fast_decode.decode_crop_resize(jpeg, h, w, box, out)
            want, _ = fast_decode.decode_crop_resize(jpeg, h, w, clamped, out)
            assert status == 0 and np.array_equal(got, want), (box, out)
            got, status = fast_decode.crop_resize(rgb, h, w, box, out)
            want, _ = fast_decode.crop_resize(rgb, h, w, clamped, out)
            assert status == 0 and np.array_equal(got, want), (box, out)


def test_scratch_is_shrunk_after_an_outlier(samples):
    tiny = jpeg_bytes(samples[0][0][:16, :16])
    big = with_frame(tiny, 3000, 3000)              # a 27 MB region at full DCT scale
    lib = fast_decode.library()
    _, status = fast_decode.decode_crop_resize(big, 3000, 3000, (0, 0, 3000, 3000), (64, 64),
                                               headroom=100.0)
    assert status == 1
    assert lib.fj_scratch_bytes() == 0
    rgb, jpeg = samples[0]
    fast_decode.decode_crop_resize(jpeg, *rgb.shape[:2], (0, 0, *rgb.shape[:2]), (64, 64))
    assert 0 < lib.fj_scratch_bytes() <= KEEP_BYTES  # an ordinary region is kept, warm


def test_progressive_stream_of_too_many_scans_is_refused(samples):
    """A scan repeated 600 times (libjpeg only warns): each is a pass over the frame, so past 500
    the sample is refused rather than decoded for as long as the stream likes."""
    jpeg = samples[1][1]
    b = jpeg.tobytes()
    last = b.rindex(b"\xff\xda")
    scan = b[last:-2]
    h, w = samples[1][0].shape[:2]
    for repeats, expected in ((50, 1), (600, 2)):
        hostile = np.frombuffer(b[:last] + scan * repeats + b"\xff\xd9", np.uint8)
        _, status = fast_decode.decode_crop_resize(hostile, h, w, (0, 0, h, w), (32, 32))
        assert status == expected, repeats


# A child process: the batch slot holds the previous sample's pixels (7), then the sample is
# decoded to a tall output under an address-space limit that leaves room for that output but
# not for the resize's tables (16 bytes per output row): the resize fails.
_FAILED_RESIZE = r"""
import json, resource, sys
import numpy as np
from ffcv_utils.load import decode as fast_decode
lib, rows = fast_decode.library(), 20_000_000
data = np.fromfile(sys.argv[1], np.uint8)
h, w = int(sys.argv[2]), int(sys.argv[3])
small = np.full((32, 32, 3), 7, np.uint8)
slot = np.full((rows, 1, 3), 7, np.uint8)
used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (used + (100 << 20), resource.RLIM_INFINITY))
lib.fj_take_failures(5)
ok = lib.fj_decode_crop_resize(data.ctypes.data, data.size, h, w, 0, 0, h, w, None, 0,
                               small.ctypes.data, 32, 32, 0, 0, 2.5, 5)
status = lib.fj_decode_crop_resize(data.ctypes.data, data.size, h, w, 0, 0, h, w, None, 0,
                                   slot.ctypes.data, rows, 1, 0, 0, 2.5, 5)
print(json.dumps({"ok": ok, "small_std": float(small.std()), "status": status,
                  "values": np.unique(slot).tolist(), "failures": lib.fj_take_failures(5)}))
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("damaged", [False, True])
def test_failed_resize_reports_failure_not_the_previous_pixels(samples, damaged, tmp_path):
    """Before the fix the resize's failure was ignored: status 0 (or 1 for a truncated JPEG,
    decoded as far as it goes) with the previous sample's pixels left in the output."""
    import json
    import subprocess
    import sys

    rgb, jpeg = samples[0]
    if damaged:
        jpeg = jpeg[:int(jpeg.size * 0.7)]          # libjpeg warns, fills the rest: status 1
    path = tmp_path / "sample.jpg"
    jpeg.tofile(path)
    child = subprocess.run([sys.executable, "-c", _FAILED_RESIZE, str(path),
                            *map(str, rgb.shape[:2])], capture_output=True, text=True, timeout=50)
    assert child.returncode == 0, child.stderr
    got = json.loads(child.stdout)
    assert got["ok"] == (1 if damaged else 0) and got["small_std"] > 5  # the limit leaves room
    assert got["status"] == 2 and got["values"] == [128]
    assert got["failures"] == (2 if damaged else 1)  # the damaged one counts for both calls
