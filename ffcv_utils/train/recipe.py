"""Recipe pieces shared by the trainer and the LR finder: optimizer, loss, batch augmentations on
the device (per sample, seeded), weight EMA, and the optimizer step with clipping.

Why these implementations:
- LAMB, Mixup/CutMix, RandomErasing, soft-target/BCE losses and the weight EMA come from timm, the
  library the RSB recipes were written with (same arithmetic as the papers' runs).
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
import torch.nn.functional as F
from torch import nn

from .models import param_groups


# ---------------------------------------------------------------------------------------------
# Optimizer
# ---------------------------------------------------------------------------------------------

def build_optimizer(p, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov), AdamW or LAMB over the no-weight-decay groups."""
    t = p.training
    groups = param_groups(model, t.weight_decay, bn_wd=bool(t.bn_wd), bias_wd=bool(t.bias_wd))
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=t.momentum, nesterov=bool(t.nesterov))
    betas = (t.beta1, t.beta2)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=t.eps)
    from timm.optim import Lamb

    return Lamb(groups, lr=lr, betas=betas, eps=t.eps)


# ---------------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------------

class RecipeLoss(nn.Module):
    """Cross-entropy or binary cross-entropy that takes class indices (smoothed here) or soft
    targets (mixup/cutmix output, already smoothed by the mixer)."""

    def __init__(self, kind: str = "ce", smoothing: float = 0.0, bce_target_thresh: float = 0.0):
        super().__init__()
        self.kind, self.smoothing = kind, smoothing
        # timm's losses, imported only where used: importing timm costs 0.7 s a process
        self.soft_ce = None  # built at the first soft-target (mixed) batch
        if kind == "bce":
            from timm.loss import BinaryCrossEntropy

            self.bce = BinaryCrossEntropy(smoothing=smoothing,
                                          target_threshold=bce_target_thresh or None)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.kind == "bce":
            return self.bce(logits, targets)
        if targets.ndim == 1:
            return F.cross_entropy(logits, targets, label_smoothing=self.smoothing)
        if self.soft_ce is None:
            from timm.loss import SoftTargetCrossEntropy

            self.soft_ce = SoftTargetCrossEntropy()
        return self.soft_ce(logits, targets)


def build_criterion(p) -> RecipeLoss:
    t = p.training
    return RecipeLoss(t.loss, t.label_smoothing, t.bce_target_thresh)


# ---------------------------------------------------------------------------------------------
# Batch augmentations (per sample, seeded)
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# EMA of the weights
# ---------------------------------------------------------------------------------------------

def build_ema(p, model: nn.Module):
    """timm's ModelEmaV3 (a copy of the model, lerped toward it), or None when ema.decay is 0."""
    if p.ema.decay <= 0:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=p.ema.decay)


def update_ema(ema, model: nn.Module, optimizer_steps: int, every: int) -> None:
    """Update every ``every`` optimizer steps (the decay is per update, as in timm)."""
    if ema is not None and optimizer_steps % every == 0:
        ema.update(model)


# ---------------------------------------------------------------------------------------------
# Optimizer step: accumulation, clipping under a GradScaler
# ---------------------------------------------------------------------------------------------

def optimizer_step(optimizer, scaler, model: nn.Module, clip_grad: float) -> float | None:
    """Unscale (so the clip threshold is in real gradient units), clip, step, update the scaler.
    Returns the gradient norm before clipping when clipping is on."""
    norm = None
    if clip_grad > 0:
        scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return norm


def accumulation_groups(iters: int, accum: int) -> list[int]:
    """Micro-batches in the accumulation group of each iteration (the last group may be short),
    so each micro-batch's loss is divided by its own group's size."""
    sizes = []
    for start in range(0, iters, accum):
        n = min(accum, iters - start)
        sizes += [n] * n
    return sizes


class Recipe:
    """What one training step needs besides the model and the batch: optimizer, scaler, loss,
    batch augmentation, EMA, clipping. ``steps`` counts optimizer steps (EMA every-k)."""

    def __init__(self, model, optimizer, scaler, criterion, augment=None, ema=None,
                 clip_grad: float = 0.0, ema_every: int = 1):
        self.model, self.optimizer, self.scaler, self.criterion = model, optimizer, scaler, criterion
        self.augment, self.ema, self.clip_grad, self.ema_every = augment, ema, clip_grad, ema_every
        self.steps = 0

    def optimizer_step(self):
        optimizer_step(self.optimizer, self.scaler, self.model, self.clip_grad)
        self.steps += 1
        update_ema(self.ema, self.model, self.steps, self.ema_every)


def apply_sync_bn(model: nn.Module, enabled: bool, distributed: bool,
                  device: torch.device) -> tuple[nn.Module, str]:
    """SyncBatchNorm when asked for and useful (several processes); torch has it on GPUs only."""
    if not enabled:
        return model, ""
    if not distributed:
        return model, "training.sync_bn: one process, plain BatchNorm is the same thing"
    if device.type != "cuda":
        from ..base.cli import UserError

        raise UserError("training.sync_bn: SyncBatchNorm runs on GPUs only (torch); "
                        "use --training.sync_bn 0 on CPU")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model), "SyncBatchNorm across processes"


def periodic_checkpoint_name(epoch_done: int, every: int) -> str | None:
    """``checkpoint_epoch_N.pt`` after every ``every``-th completed epoch (kept beside last/best)."""
    if every > 0 and epoch_done % every == 0:
        return f"checkpoint_epoch_{epoch_done}.pt"
    return None
