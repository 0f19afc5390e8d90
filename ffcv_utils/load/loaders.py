"""ffcv Loaders for training and validation: the one place pipelines are built.

Pipelines end in ``ToTorchImage`` and yield uint8 NCHW (channels-last memory) batches on the
target device; ``normalize`` turns them into floats on that device. Normalising outside the
pipeline is deliberate: ffcv 1.0.2's ``Loader`` hangs forever in ``Graph.group_operations``
when a pipeline goes jitted -> non-jitted -> jitted (``NormalizeImage`` on CPU after
``ToTorchImage``, upstream issue 396), and on a GPU the same arithmetic is one fused kernel anyway.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from . import order as orders
from ..beton.check import check as check_beton
from .draws import SampleRandom, center_box, seeded_ffcv_ops
from .watchdog import watch

# ImageNet statistics on the 0-255 scale, as the decoders output uint8.
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
# FixRes / standard evaluation: centre crop of 224/256 of the shorter side.
DEFAULT_CROP_RATIO = 224 / 256
# Image decoders: "fast" (``decode``: crop-first, DCT-scaled) or ffcv's stock ones.
DECODERS = ("fast", "ffcv")
DEFAULT_DECODER = DECODERS[0]


@dataclass
class TrainData:
    """The training loader and its decoder, whose output size the resolution schedule sets,
    and its order (``ffcv_utils.load.order.EpochOrder``: this rank's share of each epoch)."""

    loader: object
    decoder: object
    order: orders.EpochOrder | None = None

    def set_resolution(self, res: int) -> None:
        # ffcv re-queries output shapes at the start of each epoch, so this takes effect
        # at the next ``iter(loader)`` without recompiling.
        self.decoder.output_size = (int(res), int(res))

    def set_epoch(self, epoch: int, start: orders.Start = 0) -> None:
        """The next ``iter(loader)`` is ``epoch``, from ``start``: 0, or the ``position`` a
        checkpoint saved (the rest of that epoch is dealt to this run's ranks)."""
        self.loader.next_epoch = int(epoch)
        self.order.resume = (int(epoch), start)

    def position(self, batches: int):
        """Where the current epoch stands after this rank took ``batches`` batches of it (all
        ranks step together): save it with the epoch; ``set_epoch(epoch, position)`` resumes."""
        return self.order.position(batches)

    @property
    def resolution(self) -> int:
        return int(self.decoder.output_size[0])

    def take_failures(self) -> int:
        """Samples whose JPEG failed to decode since the last call (fast decoder only)."""
        return take_decode_failures(self.decoder)


def take_decode_failures(decoder_or_loader) -> int:
    """Count of damaged samples (decoded as far as possible, rest grey) since the last call,
    for a fast decoder or a loader built by ``val_loader``; 0 for the stock decoders."""
    decoder = getattr(decoder_or_loader, "image_decoder", decoder_or_loader)
    take = getattr(decoder, "take_failures", None)
    return int(take()) if take else 0


def _train_image_ops(res: int, decoder: str, draws: SampleRandom):
    """(decoder op, ops up to ToTensor) for RandomResizedCrop + flip drawn from ``draws``."""
    if decoder == "fast":
        from ffcv_utils.load import decode as fast_decode

        op = fast_decode.random_resized_crop((res, res), random=draws)  # flip fused in
        return op, [op]
    op, flip = seeded_ffcv_ops((res, res), draws)
    return op, [op, flip]


def _center_crop_op(res: int, ratio: float, decoder: str):
    if decoder == "fast":
        from ffcv_utils.load import decode as fast_decode

        return fast_decode.center_crop((res, res), ratio=ratio)
    return _stock_center_crop_class()((res, res), ratio=ratio)


@functools.lru_cache(maxsize=None)
def _stock_center_crop_class():
    """ffcv's centre-crop decoder with a crop of at least one pixel and at most the image.
    ffcv's own crop is ``int(ratio * shorter side)``: 0 for an image one pixel high or wide (a
    beton may declare one), and OpenCV's resize of an empty crop throws through ffcv's C code,
    which aborts the process (SIGABRT, exit 134); a ratio above 1 (a checkpoint's params) would
    crop outside the image."""
    from ffcv.fields.rgb_image import CenterCropRGBImageDecoder

    class CenterCrop(CenterCropRGBImageDecoder):
        @property
        def get_crop_generator(self):
            return center_box.py_func  # ffcv compiles it itself

    return CenterCrop


# Extra ops for the label pipeline of each training loader built from now on: each hook is called
# once per loader and returns an ffcv Operation (or None); it runs on the labels as CPU tensors,
# non-jitted. The tests that provoke a failing or stalled loader add theirs here.
TRAIN_LABEL_HOOKS: list = []


def _label_pipeline(device, hooks=()):
    from ffcv.fields.basics import IntDecoder
    from ffcv.transforms import Squeeze, ToDevice, ToTensor

    extra = [op for hook in hooks if (op := hook()) is not None]
    # Squeeze only the per-sample axis: a bare Squeeze() makes a 0-d label of a batch of one,
    # which ToDevice then fails on inside the loader thread (the run used to hang there).
    return [IntDecoder(), ToTensor(), *extra, Squeeze(1), ToDevice(device, non_blocking=True)]


def _image_tail(device):
    from ffcv.transforms import ToDevice, ToTensor, ToTorchImage

    return [ToTensor(), ToDevice(device, non_blocking=True), ToTorchImage(channels_last=True)]


def train_loader(path: str, *, batch_size: int, num_workers: int, res: int,
                 device: torch.device | str = "cpu", distributed: bool = False,
                 in_memory: bool = True, seed: int = 0, drop_last: bool = True,
                 batches_ahead: int = 3, decoder: str = DEFAULT_DECODER,
                 window_pages: int = orders.DEFAULT_WINDOW_PAGES) -> TrainData:
    """RandomResizedCrop + flip at ``res`` in the order of ``ffcv_utils.load.order``: random (the
    global sequence of (seed, epoch), any number of processes) when ``in_memory``, page-aware
    (ffcv's process cache, each page read once per epoch by one rank) when not.

    ``decoder``: "fast" or "ffcv" (see ``DECODERS``); crops and flips are per-sample seeded.
    ``drop_last=False`` keeps a last partial batch on a single process."""
    from ffcv.reader import Reader

    check_beton(path)  # a cut or foreign file: one line here, not ffcv's traceback
    device = torch.device(device)
    draws = SampleRandom(seed)
    op, ops = _train_image_ops(res, decoder, draws)
    reader = Reader(str(path))
    rank, world_size = _rank_and_world() if distributed else (0, 1)
    order = orders.EpochOrder(
        reader.num_samples, seed=seed, batch_size=batch_size, world_size=world_size,
        rank=rank, layout=None if in_memory else orders.PageLayout.from_reader(reader),
        window_pages=window_pages, drop_last=drop_last, draws=draws)
    loader = _ordered_loader_class()(
        path, order, batch_size=batch_size, num_workers=num_workers, os_cache=in_memory,
        batches_ahead=batches_ahead,
        pipelines={"image": [*ops, *_image_tail(device)],
                   "label": _label_pipeline(device, TRAIN_LABEL_HOOKS)})
    return TrainData(watch(loader, path), op, order)


def _rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size: torch.distributed's, else torchrun's env."""
    import os

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


@functools.lru_cache(maxsize=None)
def _loader_threads_only() -> None:
    """Make ffcv set only its own (numba's) thread count. ffcv 1.0.2's ``Compiler.set_num_threads``
    also sets torch's to the loader's ``num_workers``, on every ``iter(loader)``: the model's CPU
    arithmetic then changed with a loader setting, and so did its float rounding."""
    from multiprocessing import cpu_count

    from ffcv.pipeline.compiler import Compiler
    from numba import set_num_threads

    def set_threads(cls, n):
        cls.num_threads = n if n >= 1 else cpu_count()
        set_num_threads(cls.num_threads)

    Compiler.set_num_threads = classmethod(set_threads)


@functools.lru_cache(maxsize=None)
def _ordered_loader_class():
    """ffcv's Loader walking an ``EpochOrder``: ffcv 1.0.2 takes no order instance (its check
    wants an instance, then calls it), and its ``len`` is the first epoch's, not this one's."""
    from ffcv.loader import Loader, OrderOption

    from .direct_pages import read_pages_directly

    _loader_threads_only()

    class OrderedLoader(Loader):
        def __init__(self, path, order: orders.EpochOrder, **kwargs):
            # SEQUENTIAL only while ffcv's constructor runs (its first order is an arange)
            super().__init__(str(path), order=OrderOption.SEQUENTIAL, drop_last=True,
                             seed=order.seed, **kwargs)
            self.traversal_order = order
            if not kwargs.get("os_cache", True):
                read_pages_directly(self)

        def __len__(self):
            return self.traversal_order.num_batches(self.next_epoch)

    return OrderedLoader


def shard_indices(num_samples: int, rank: int, world_size: int) -> np.ndarray:
    """This rank's share of a validation set: every sample lands on exactly one rank.

    ffcv's own ``distributed=True`` pads the last batch with repeats (like DistributedSampler),
    which would count some validation images twice.
    """
    return np.arange(rank, num_samples, world_size, dtype=np.uint64)


def val_loader(path: str, *, batch_size: int, num_workers: int, res: int,
               device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1,
               crop_ratio: float = DEFAULT_CROP_RATIO, in_memory: bool = True,
               decoder: str = DEFAULT_DECODER):
    """Centre crop at ``res`` in file order; under DDP each rank gets a disjoint shard.

    The loader's ``image_decoder`` is the decoder op (``take_decode_failures`` reads it)."""
    from ffcv.loader import Loader, OrderOption
    from ffcv.reader import Reader

    check_beton(path)
    _loader_threads_only()
    device = torch.device(device)
    indices = None
    if world_size > 1:
        indices = shard_indices(Reader(path).num_samples, rank, world_size)
    op = _center_crop_op(res, crop_ratio, decoder)
    loader = Loader(path, batch_size=batch_size, num_workers=num_workers,
                    order=OrderOption.SEQUENTIAL, os_cache=in_memory, drop_last=False,
                    indices=indices, seed=0,
                    pipelines={"image": [op, *_image_tail(device)],
                               "label": _label_pipeline(device)})
    loader.image_decoder = op
    return watch(loader, path)


@functools.lru_cache(maxsize=None)
def _mean_std(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    # Built once per device/dtype: creating them per batch would be a blocking host-to-GPU
    # copy, i.e. a synchronisation, at every training step.
    mean = torch.tensor(IMAGENET_MEAN, device=device, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device, dtype=dtype).view(1, 3, 1, 1)
    return mean, std


def normalize(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 NCHW -> ``dtype``, ImageNet-normalised, keeping the memory format."""
    mean, std = _mean_std(images.device, dtype)
    return (images.to(dtype) - mean) / std
