"""Batch augmentations on the device, per sample and seeded: RandAugment, random erasing and
mixup/cutmix, applied by ``BatchAugment``.

- timm's Mixup in mode ``elem`` draws lambda and the mixup/cutmix choice per sample; its
  RandomErasing draws a box per sample and fills it on the batch's device. Both draw from Python's
  and NumPy's global RNGs, so every call runs under :func:`seeded` with a seed derived from
  ``data.seed``, the rank, the epoch and the step: runs are reproducible and a resumed run
  continues the same sequence.
- RandAugment uses torchvision's ``transforms.v2.RandAugment`` ops and magnitudes on uint8
  tensors. Called on a batch, that transform draws one op for all images, and called per image it
  is a Python loop of small kernels (256 calls per round at batch 256). Here each image draws its
  own op, magnitude and sign, and each op runs once per distinct (op, magnitude, sign) on the
  images that drew it: tens of calls per round whatever the batch. torchvision's ops compute
  their statistics (contrast mean, histograms) per image, so this equals the per-image loop.
"""
from __future__ import annotations

import random
from contextlib import contextmanager

import numpy as np
import torch


def step_seed(seed: int, rank: int, epoch: int, step: int) -> int:
    """A 32-bit seed per (run seed, rank, epoch, step): independent streams, resumable."""
    return int(np.random.SeedSequence([seed, rank, epoch, step]).generate_state(1)[0])


@contextmanager
def seeded(seed: int, device: torch.device):
    """Seed Python's, NumPy's and torch's RNGs for the block and restore them afterwards."""
    py, npy = random.getstate(), np.random.get_state()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
            yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)


class PerSampleRandAugment:
    """torchvision's RandAugment with an op, magnitude and sign drawn per image of a uint8 NCHW
    batch, with timm's magnitude noise (``rand-mM-mstdS``: magnitude ~ N(M, S) on timm's 0..10
    scale, rounded to torchvision's 11 bins)."""

    BINS = 11

    def __init__(self, num_ops: int, magnitude: float, magnitude_std: float):
        from torchvision.transforms import v2

        self.num_ops, self.magnitude, self.magnitude_std = num_ops, magnitude, magnitude_std
        self.transform = v2.RandAugment(num_ops=num_ops, magnitude=int(round(magnitude)),
                                        num_magnitude_bins=self.BINS)
        self.ops = list(self.transform._AUGMENTATION_SPACE.items())

    def draw(self, n: int) -> list[torch.Tensor]:
        """Per round, an (n, 3) int tensor: op index, magnitude bin, sign (1: negated)."""
        rounds = []
        for _ in range(self.num_ops):
            op = torch.randint(len(self.ops), (n,))
            if self.magnitude_std > 0:
                m = torch.normal(float(self.magnitude), float(self.magnitude_std), (n,))
            else:
                m = torch.full((n,), float(self.magnitude))
            level = m.round().clamp(0, self.BINS - 1).long()
            sign = (torch.rand(n) <= 0.5).long()
            rounds.append(torch.stack([op, level, sign], dim=1))
        return rounds

    def apply(self, images: torch.Tensor, rounds: list[torch.Tensor]) -> torch.Tensor:
        """The drawn ops, each called once on the images that share (op, magnitude, sign)."""
        out = images.clone()
        height, width = images.shape[-2:]
        # each op's magnitude per bin, for this image size (computed once per call)
        table = []
        for name, (magnitudes_fn, signed) in self.ops:
            mags = magnitudes_fn(self.BINS, height, width)
            table.append((name, signed, None if mags is None else mags.tolist()))
        for plan in rounds:
            groups: dict[tuple[str, float], list[int]] = {}
            for i, (op, level, sign) in enumerate(plan.tolist()):
                name, signed, magnitudes = table[op]
                if name == "Identity":
                    continue
                value = 0.0 if magnitudes is None else float(magnitudes[level])
                if signed and sign:
                    value = -value
                groups.setdefault((name, value), []).append(i)
            if not groups:
                continue
            # every group's image indices in one host-to-device copy, sliced per group
            order = torch.tensor([i for rows in groups.values() for i in rows],
                                 device=images.device)
            start = 0
            for (name, value), rows in groups.items():
                idx = order[start:start + len(rows)]
                start += len(rows)
                out[idx] = self.transform._apply_image_or_video_transform(
                    out[idx], name, value, interpolation=self.transform.interpolation,
                    fill=self.transform._fill)
        return out

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.apply(images, self.draw(images.shape[0]))


class BatchAugment:
    """RandAugment on the uint8 batch, then ``prepare`` (normalise), random erasing and
    mixup/cutmix on the float batch. Returns ``(inputs, targets)``; targets are soft
    ``(B, num_classes)`` when mixing is on, else the labels."""

    def __init__(self, num_classes: int, device: torch.device, *, seed: int = 0, rank: int = 0,
                 randaug: PerSampleRandAugment | None = None, erase=None, mixup=None):
        self.num_classes, self.device = num_classes, device
        self.seed, self.rank = seed, rank
        self.randaug, self.erase, self.mixup = randaug, erase, mixup

    def __call__(self, images, labels, prepare, epoch: int, step: int):
        with seeded(step_seed(self.seed, self.rank, epoch, step), self.device):
            if self.randaug is not None:
                images = self.randaug(images)
            x = prepare(images)
            if self.erase is not None:
                x = self.erase(x)
            if self.mixup is not None:
                x, labels = self.mixup(x, labels)
        return x, labels


def build_batch_augment(p, num_classes: int, device: torch.device,
                        rank: int = 0) -> BatchAugment | None:
    """The batch augmentations the ``augment`` keys ask for, or None when all are off."""
    a = p.augment
    randaug = erase = mixup = None
    if a.randaug_ops > 0:
        randaug = PerSampleRandAugment(a.randaug_ops, a.randaug_magnitude, a.randaug_mstd)
    if a.erase_prob > 0:
        from timm.data.random_erasing import RandomErasing

        erase = RandomErasing(probability=a.erase_prob, mode=a.erase_mode, device=device)
    if a.mixup_alpha > 0 or a.cutmix_alpha > 0:
        from timm.data import Mixup

        mixup = Mixup(mixup_alpha=a.mixup_alpha, cutmix_alpha=a.cutmix_alpha, prob=a.mix_prob,
                      switch_prob=a.switch_prob, mode=a.mix_mode,
                      label_smoothing=p.training.label_smoothing, num_classes=num_classes)
    if randaug is erase is mixup is None:
        return None
    return BatchAugment(num_classes, device, seed=p.data.seed, rank=rank, randaug=randaug,
                        erase=erase, mixup=mixup)
