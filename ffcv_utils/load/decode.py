"""Fast image decoders for ffcv pipelines: crop first, decode only what the crop needs, resize once.

Drop-in replacements for ffcv's ``RandomResizedCropRGBImageDecoder`` (+ ``RandomHorizontalFlip``)
and ``CenterCropRGBImageDecoder``. Stock ffcv decodes every JPEG whole at full scale, crops, resizes
with OpenCV's generic ``INTER_AREA`` and copies again to flip. Here the crop is drawn first (with
ffcv's statistics, from per-sample seeded draws: ``ffcv_utils.load.draws``), the JPEG is decoded at the
smallest DCT scale M/8 that keeps the crop at least as large as the output and only over the MCU
rows/columns covering it, and a box-then-bilinear resize writes the (optionally mirrored) output
directly. Work is in C (``csrc/fastjpeg.c``, loaded with ctypes) and called from the numba code ffcv
compiles, as ffcv calls its own ``imdecode``.

Damaged JPEGs never stop the loader: they come out decoded as far as possible (or grey) and are
counted; ``take_failures()`` returns and resets the count of a decoder. Every sample is treated as
untrusted (README, "What the decoder guarantees"): the C side gets each sample's stored size and
refuses, grey and counted, raw samples shorter than their metadata, frames larger than it or than
8192 x 8192 pixels, and non-positive sizes; crops are clamped into the image. A resize that fails
(out of memory) is grey and counted too, never the batch slot's previous pixels.
"""
from __future__ import annotations

import ctypes
import itertools
from ctypes import c_double, c_int32, c_uint64, c_void_p
from pathlib import Path

import numpy as np

_SLOTS = 64  # failure counters in the C library (FJ_SLOTS)
_next_slot = itertools.count()
# Decode at a DCT scale leaving the crop at least HEADROOM x the output: libjpeg's reduced IDCTs
# alias (down to 24 dB against INTER_AREA on detailed photos at headroom 1, 29.6 dB at 2 for
# 32 px outputs); the area average over the remaining factor hides it (tests/test_fast_decode.py).
HEADROOM = 2.5
# libjpeg's IFAST IDCT at full scale: no faster here (entropy decoding dominates) and it costs
# fidelity (29.6 dB on a 284x350 -> 224 crop), so off.
FAST_DCT = False


class FastDecodeUnavailable(RuntimeError):
    """The C extension is not built (``make install`` builds it)."""


def _find_library() -> Path:
    here = Path(__file__).resolve().parent
    found = sorted(here.glob("_fastjpeg*.so")) + sorted(here.glob("_fastjpeg*.pyd"))
    if not found:
        raise FastDecodeUnavailable(
            "data.decoder: the fast decoder's C extension is not built; run `make install` "
            "(or `python setup.py build_ext --inplace`), or use --data.decoder ffcv")
    return found[0]


_lib = None


def library() -> ctypes.CDLL:
    """The loaded C library (loaded once; raises FastDecodeUnavailable when it is not built)."""
    global _lib
    if _lib is None:
        lib = ctypes.CDLL(str(_find_library()))
        lib.fj_decode_crop_resize.argtypes = [
            c_void_p, c_uint64, c_int32, c_int32,            # data, size, height, width
            c_int32, c_int32, c_int32, c_int32,              # crop y, x, h, w
            c_void_p, c_uint64,                              # scratch, its size
            c_void_p, c_int32, c_int32, c_int32,             # dst, out h, out w, flip
            c_int32, c_double, c_int32]                      # fast dct, headroom, slot
        lib.fj_decode_crop_resize.restype = c_int32
        lib.fj_crop_resize.argtypes = [
            c_void_p, c_uint64, c_int32, c_int32,            # data, size, height, width
            c_int32, c_int32, c_int32, c_int32,              # crop y, x, h, w
            c_void_p, c_int32, c_int32, c_int32, c_int32]    # dst, out h, out w, flip, slot
        lib.fj_crop_resize.restype = c_int32
        lib.fj_scratch_bytes.argtypes = []
        lib.fj_scratch_bytes.restype = c_uint64
        lib.fj_take_failures.argtypes = [c_int32]
        lib.fj_take_failures.restype = ctypes.c_int64
        lib.fj_failure_count.argtypes = [c_int32]
        lib.fj_failure_count.restype = ctypes.c_int64
        _lib = lib
    return _lib


def available() -> bool:
    try:
        library()
        return True
    except (FastDecodeUnavailable, OSError):
        return False


# -- plain-numpy entry points (tests, benchmarks); the pipeline calls the C functions from numba --

def decode_crop_resize(jpeg: np.ndarray, height: int, width: int, crop: tuple[int, int, int, int],
                       out_size: tuple[int, int], flip: bool = False,
                       fast_dct: bool = FAST_DCT, headroom: float = HEADROOM,
                       slot: int = _SLOTS - 1) -> tuple[np.ndarray, int]:
    """JPEG bytes -> (out_h, out_w, 3) uint8 of the crop (y, x, h, w), and the C status
    (0 ok, 1 damaged: decoded as far as possible, 2 nothing decodable, refused or not resized:
    grey).
    Decodes into the per-thread scratch, as the pipeline does."""
    lib = library()
    jpeg = np.ascontiguousarray(jpeg, dtype=np.uint8).reshape(-1)
    dst = np.empty((out_size[0], out_size[1], 3), np.uint8)
    y, x, h, w = (int(v) for v in crop)
    status = lib.fj_decode_crop_resize(jpeg.ctypes.data, jpeg.size, height, width, y, x, h, w,
                                       None, 0, dst.ctypes.data,
                                       dst.shape[0], dst.shape[1], int(flip), int(fast_dct),
                                       float(headroom), slot)
    return dst, int(status)


def crop_resize(data: np.ndarray, height: int, width: int, crop: tuple[int, int, int, int],
                out_size: tuple[int, int], flip: bool = False,
                slot: int = _SLOTS - 1) -> tuple[np.ndarray, int]:
    """A raw sample (HWC RGB bytes, any shape, and the metadata's height/width, which may claim
    more than the bytes hold) -> (out_h, out_w, 3) uint8 of the crop (y, x, h, w), and the C
    status (0 ok, 2 refused: grey, counted in ``slot``)."""
    lib = library()
    data = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)
    dst = np.empty((out_size[0], out_size[1], 3), np.uint8)
    y, x, h, w = (int(v) for v in crop)
    status = lib.fj_crop_resize(data.ctypes.data, data.size, height, width, y, x, h, w,
                                dst.ctypes.data, dst.shape[0], dst.shape[1], int(flip), slot)
    return dst, int(status)


# -- ffcv pipeline operations ---------------------------------------------------------------------

class _SlotMixin:
    """What the fast decoders share besides their kernel: a failure-count slot in the C library,
    the per-sample draws and an output-only allocation (before ffcv's decoder in the MRO)."""

    flip_prob = 0.0
    fast_dct = FAST_DCT
    headroom = HEADROOM

    def __init__(self, output_size, random=None):
        super().__init__(output_size)
        from .draws import SampleRandom

        self.random = random or SampleRandom(0)  # (seed, epoch) of the per-sample draws
        self.slot = next(_next_slot) % _SLOTS
        library().fj_take_failures(self.slot)

    def declare_state_and_memory(self, previous_state):
        # only the output: stock ffcv also allocates a full-size decode buffer per batch
        # slot (max height x max width x 3 bytes per image), which the C side does not need
        from dataclasses import replace

        from ffcv.pipeline.allocation_query import AllocationQuery

        shape = (self.output_size[0], self.output_size[1], 3)
        return (replace(previous_state, jit_mode=True, shape=shape, dtype=np.dtype("<u1")),
                AllocationQuery(shape, np.dtype("<u1")))

    def take_failures(self) -> int:
        """Samples that failed to decode since the last call (and reset the count)."""
        return int(library().fj_take_failures(self.slot))


def _c_calls():
    """The C library's two entry points, as numba-compilable functions of the arrays."""
    lib = library()
    c_decode = lib.fj_decode_crop_resize
    c_resize = lib.fj_crop_resize

    def decode_jpeg(data, height, width, i, j, h, w, dst, flip, fast_dct, headroom, slot):
        # scratch 0 (NULL): the C side decodes into a buffer kept per thread, warm in cache
        return c_decode(data.ctypes.data, data.size, height, width, i, j, h, w,
                        0, 0, dst.ctypes.data, dst.shape[0], dst.shape[1],
                        flip, fast_dct, headroom, slot)

    def resize_raw(data, height, width, i, j, h, w, dst, flip, slot):
        # the sample's stored size goes along: its metadata may claim more pixels than it holds
        return c_resize(data.ctypes.data, data.size, height, width, i, j, h, w,
                        dst.ctypes.data, dst.shape[0], dst.shape[1], flip, slot)

    return decode_jpeg, resize_raw


def _base_decoder_class():
    from ffcv.fields.rgb_image import IMAGE_MODES, ResizedCropRGBImageDecoder
    from ffcv.pipeline.compiler import Compiler

    from .draws import flip_draw, state_key

    decode_jpeg, resize_raw = _c_calls()

    class _FastCropDecoder(_SlotMixin, ResizedCropRGBImageDecoder):
        """Shared code: the subclasses choose the crop and whether to flip."""

        def generate_code(self):
            jpg = IMAGE_MODES["jpg"]
            mem_read = self.memory_read
            my_range = Compiler.get_iterator()
            decode_c = Compiler.compile(decode_jpeg)
            resize_c = Compiler.compile(resize_raw)
            get_crop_c = self.get_crop_generator  # already jitted (draws' own, exact float)
            scale, ratio = self.scale, self.ratio
            if isinstance(scale, tuple):
                scale = np.array(scale)
            if isinstance(ratio, tuple):
                ratio = np.array(ratio)
            flip_prob = float(self.flip_prob)
            fast_dct = np.int32(1 if self.fast_dct else 0)
            headroom = float(self.headroom)
            slot = np.int32(self.slot)
            address = self.random.address

            def decode(batch_indices, destination, metadata, storage_state):
                for dst_ix in my_range(len(batch_indices)):
                    source_ix = batch_indices[dst_ix]
                    field = metadata[source_ix]
                    image_data = mem_read(field["data_ptr"], storage_state)
                    height = np.uint32(field["height"])
                    width = np.uint32(field["width"])
                    key = state_key(address, source_ix)
                    i, j, h, w = get_crop_c(height, width, scale, ratio, key)
                    flip = np.int32(1 if flip_draw(key, flip_prob) else 0)
                    if field["mode"] == jpg:
                        decode_c(image_data, height, width, i, j, h, w, destination[dst_ix],
                                 flip, fast_dct, headroom, slot)
                    else:
                        resize_c(image_data, height, width, i, j, h, w,
                                 destination[dst_ix], flip, slot)
                return destination[:len(batch_indices)]

            decode.is_parallel = True
            return decode

    return _FastCropDecoder


def _make_decoder_classes():
    # ffcv is imported lazily (as in loaders.py): importing it costs seconds.
    from numba import njit

    from .draws import SampleRandom, center_box, random_crop

    _FastCropDecoder = _base_decoder_class()

    class FastRandomResizedCropDecoder(_FastCropDecoder):
        """RandomResizedCrop (ffcv's statistics: scale, ratio, fallback) + horizontal flip,
        drawn from (seed, epoch, sample index) of ``random`` (``ffcv_utils.load.draws``)."""

        def __init__(self, output_size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                     flip_prob: float = 0.5, random: SampleRandom | None = None):
            super().__init__(output_size, random)
            self.scale = scale
            self.ratio = ratio
            self.flip_prob = flip_prob

        @property
        def get_crop_generator(self):
            return random_crop

    class FastCenterCropDecoder(_FastCropDecoder):
        """Centre crop of ``ratio`` times the shorter side, resized to ``output_size``."""

        def __init__(self, output_size, ratio):
            super().__init__(output_size)
            self.scale = None
            self.ratio = ratio

        @property
        def get_crop_generator(self):
            return center_crop_keyed

    @njit
    def center_crop_keyed(height, width, scale, ratio, key):
        return center_box(height, width, scale, ratio)

    return FastRandomResizedCropDecoder, FastCenterCropDecoder


_classes = None


def _decoder_classes():
    global _classes
    if _classes is None:
        _classes = _make_decoder_classes()
    return _classes


def random_resized_crop(output_size, **kwargs):
    """A fast RandomResizedCrop+flip decoder for an ffcv image pipeline."""
    return _decoder_classes()[0](output_size, **kwargs)


def center_crop(output_size, ratio):
    """A fast centre-crop decoder for an ffcv image pipeline."""
    return _decoder_classes()[1](output_size, ratio)
