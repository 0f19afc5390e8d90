"""The training loss: cross-entropy or binary cross-entropy (as ResNet Strikes Back), on class
indices or on the soft targets mixup/cutmix make; timm's soft-target and BCE losses, the ones the
RSB recipes were written with."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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
