"""Per-sample random draws: the crop and flip of sample i in epoch e are a function of
(seed, e, i) alone, whatever the number of loader threads or processes.

ffcv's decoders draw with numba's ``np.random``, whose state is per thread, so the crops of a
run depend on which thread decoded which sample (ffcv issues 164, 140, 300, 392). Here each
draw is a counter-based hash (splitmix64) of (seed, epoch, sample index, draw number), computed
in the jitted decoder code. The seed and epoch live in a small array that the compiled code
reads through its address at every batch: numba freezes arrays captured by compiled code, and
recompiling per epoch would cost seconds. The compiled functions are kept in numba's on-disk
cache (``numba_cache.on_disk``): each new process loads them instead of spending 0.5 s compiling
them again.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from ..base.numba_cache import on_disk

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_TO_UNIT = 1.0 / float(1 << 53)
# Draw numbers: 4 per crop attempt (10 attempts, as torchvision and ffcv), then the flip.
_CROP_TRIES = 10
FLIP_DRAW = 4 * _CROP_TRIES


@intrinsic
def _load_int64(typingctx, address, index):
    """The ``index``-th int64 at ``address`` (read at run time, not frozen at compile time)."""
    sig = types.int64(types.int64, types.int64)

    def codegen(context, builder, signature, args):
        base = builder.inttoptr(args[0], ir.IntType(64).as_pointer())
        return builder.load(builder.gep(base, [args[1]]))

    return sig, codegen


@njit(inline="always")  # inlined into its callers' code: nothing of its own to cache
def _mix(x):
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


@on_disk
@njit
def sample_key(seed, epoch, index):
    """The key of one sample's draws in one epoch."""
    key = _mix(np.uint64(seed) + _GOLDEN)
    key = _mix(key ^ np.uint64(epoch))
    return _mix(key ^ np.uint64(index))


@on_disk
@njit
def uniform(key, n):
    """The ``n``-th uniform draw in [0, 1) of ``key``."""
    return np.float64(_mix(key + np.uint64(n + 1) * _GOLDEN) >> _S11) * _TO_UNIT


@on_disk
@njit
def state_key(address, index):
    """The key of sample ``index`` under the (seed, epoch) stored at ``address``."""
    return sample_key(_load_int64(np.int64(address), np.int64(0)),
                      _load_int64(np.int64(address), np.int64(1)), index)


@on_disk
@njit
def random_crop(height, width, scale, ratio, key):
    """RandomResizedCrop's box (i, j, h, w) from ``key``: area fraction uniform in ``scale``,
    log aspect uniform in ``ratio``, 10 tries, then the central crop clamped to ``ratio``."""
    height, width = np.int64(height), np.int64(width)
    area = float(height * width)
    lo, hi = min(ratio[0], ratio[1]), max(ratio[0], ratio[1])
    log_lo, log_hi = np.log(lo), np.log(hi)
    for t in range(_CROP_TRIES):
        target = area * (scale[0] + (scale[1] - scale[0]) * uniform(key, 4 * t))
        aspect = np.exp(log_lo + (log_hi - log_lo) * uniform(key, 4 * t + 1))
        w = np.int64(round(np.sqrt(target * aspect)))
        h = np.int64(round(np.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = np.int64(uniform(key, 4 * t + 2) * (height - h + 1))
            j = np.int64(uniform(key, 4 * t + 3) * (width - w + 1))
            return i, j, h, w
    w, h = width, height
    if width < lo * height:
        h = np.int64(round(width / lo))
    elif width > hi * height:
        w = np.int64(round(height * hi))
    return (height - h) // 2, (width - w) // 2, h, w


@njit
def center_box(height, width, _, ratio):
    """The centre crop ``(top, left, side, side)``: ``ratio`` of the shorter side, at least one
    pixel and at most the image. ffcv's own ``int(ratio * shorter)`` is 0 for an image one pixel
    high or wide (a beton may declare one), and resizing an empty crop throws through C code."""
    shorter = min(height, width)
    side = min(max(int(ratio * shorter), 1), shorter)
    return (height - side) // 2, (width - side) // 2, side, side


@on_disk
@njit
def flip_draw(key, flip_prob):
    """Whether this sample is mirrored."""
    return flip_prob > 0 and uniform(key, FLIP_DRAW) < flip_prob


class SampleRandom:
    """The (seed, epoch) the decoders' compiled code reads; ``epoch`` is set by the order."""

    def __init__(self, seed: int = 0):
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0 (got {seed})")
        self._state = np.array([int(seed), 0], np.int64)

    @property
    def address(self) -> np.int64:
        # an int64, not a Python int: numba types a Python int captured by compiled code as a
        # literal, compiling state_key (and adding it to the on-disk cache) once per address
        return np.int64(self._state.ctypes.data)

    @property
    def seed(self) -> int:
        return int(self._state[0])

    @property
    def epoch(self) -> int:
        return int(self._state[1])

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._state[1] = int(value)

    def crop(self, index: int, height: int, width: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
        """The crop box of sample ``index`` this epoch (what the decoders draw)."""
        return tuple(int(v) for v in random_crop(height, width, np.array(scale),
                                                 np.array(ratio), self._key(index)))

    def flip(self, index: int, flip_prob: float = 0.5) -> bool:
        return bool(flip_draw(self._key(index), flip_prob))

    def _key(self, index: int) -> np.uint64:
        # numba hands uint64 back as a Python int, which it would retype as int64
        return np.uint64(sample_key(self.seed, self.epoch, index))


def seeded_ffcv_ops(output_size, random: SampleRandom, flip_prob: float = 0.5,
                    scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """(decoder, flip): ffcv's RandomResizedCrop decoder and a flip drawing from ``random``,
    for the ``ffcv`` decoder choice (the crops and flips of the fast decoder, same draws)."""
    global _ffcv_classes
    if _ffcv_classes is None:
        _ffcv_classes = _make_ffcv_classes()
    crop_class, flip_class = _ffcv_classes
    return (crop_class(output_size, random, scale=scale, ratio=ratio),
            flip_class(random, flip_prob))


_ffcv_classes = None


def _make_ffcv_classes():
    # ffcv is imported lazily (importing it costs seconds)
    return _make_crop_class(), _make_flip_class()


def _make_crop_class():
    from ffcv.fields.rgb_image import IMAGE_MODES, RandomResizedCropRGBImageDecoder
    from ffcv.libffcv import imdecode, resize_crop
    from ffcv.pipeline.compiler import Compiler

    class SeededRandomResizedCrop(RandomResizedCropRGBImageDecoder):
        """ffcv's decode-whole-then-crop decoder, the crop drawn from (seed, epoch, sample)."""

        def __init__(self, output_size, random: SampleRandom, scale, ratio):
            super().__init__(output_size, scale=scale, ratio=ratio)
            self.random = random

        def generate_code(self):
            jpg, address = IMAGE_MODES["jpg"], self.random.address
            mem_read, my_range = self.memory_read, Compiler.get_iterator()
            decode_c, resize_c = Compiler.compile(imdecode), Compiler.compile(resize_crop)
            scale, ratio = np.array(self.scale), np.array(self.ratio)

            def decode(batch_indices, my_storage, metadata, storage_state):
                destination, scratch = my_storage
                for k in my_range(len(batch_indices)):
                    index = batch_indices[k]
                    field = metadata[index]
                    data = mem_read(field["data_ptr"], storage_state)
                    height, width = np.uint32(field["height"]), np.uint32(field["width"])
                    if field["mode"] == jpg:
                        whole = scratch[k]
                        decode_c(data, whole, height, width, height, width, 0, 0, 1, 1,
                                 False, False)
                        image = whole.reshape(-1)[:3 * height * width].reshape(height, width, 3)
                    else:
                        image = data.reshape(height, width, 3)
                    i, j, h, w = random_crop(height, width, scale, ratio,
                                             state_key(address, index))
                    resize_c(image, i, i + h, j, j + w, destination[k])
                return destination[:len(batch_indices)]

            decode.is_parallel = True
            return decode

    return SeededRandomResizedCrop


def _make_flip_class():
    from dataclasses import replace

    from ffcv.pipeline.allocation_query import AllocationQuery
    from ffcv.pipeline.compiler import Compiler
    from ffcv.pipeline.operation import Operation

    class SeededHorizontalFlip(Operation):
        """Mirror each image with ``flip_prob``, drawn from (seed, epoch, sample)."""

        def __init__(self, random: SampleRandom, flip_prob: float):
            super().__init__()
            self.random, self.flip_prob = random, float(flip_prob)

        def generate_code(self):
            my_range = Compiler.get_iterator()
            address, flip_prob = self.random.address, self.flip_prob

            def flip(images, dst, batch_indices):
                for k in my_range(images.shape[0]):
                    if flip_draw(state_key(address, batch_indices[k]), flip_prob):
                        dst[k] = images[k, :, ::-1]
                    else:
                        dst[k] = images[k]
                return dst

            flip.is_parallel = True
            flip.with_indices = True
            return flip

        def declare_state_and_memory(self, previous_state):
            return (replace(previous_state, jit_mode=True),
                    AllocationQuery(previous_state.shape, previous_state.dtype))

    return SeededHorizontalFlip
